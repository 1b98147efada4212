"""Stop signals raise a flag and nothing else (the exit on a second one: tests/cli)."""

from __future__ import annotations

import os
import signal

import pytest

from ddtrain.fault.signals import StopRequest


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


