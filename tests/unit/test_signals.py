"""Stop signals raise a flag and nothing else; a second one exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ddtrain.fault.signals import EXIT_SECOND_SIGNAL, StopRequest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_only_raises_the_flag(sig, capfd):
    stop = StopRequest().install()
    try:
        assert not stop.requested
        os.kill(os.getpid(), sig)
        assert stop.requested and stop.signal_name == sig.name
        assert f"{sig.name} received: stopping after this step" in capfd.readouterr().err
    finally:
        stop.uninstall()
    assert signal.getsignal(sig) is not stop._handle


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
