"""A second stop signal ends the process at once: only a real process can show an exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from ddtrain.fault.signals import EXIT_SECOND_SIGNAL


def test_a_second_signal_exits_at_once_without_a_checkpoint():
    code = textwrap.dedent("""
        import os, signal, time
        from ddtrain.fault.signals import StopRequest
        StopRequest().install()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("still running")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == EXIT_SECOND_SIGNAL
    assert "still running" not in out.stdout
    assert "SIGTERM again: exiting now, without a checkpoint" in out.stderr
