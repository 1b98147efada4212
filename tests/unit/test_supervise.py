"""ddtrain-launch's watch over mpirun (launcher/supervise.py) with stand-in children: exit codes
passed through, stop signals passed on once, and a child that outlives a failed rank's note by
the grace period stopped. The real mpirun cases are in tests/mpi and tests/cluster."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time

import pytest

from ddtrain.errors import EXIT_PEER_FAILED
from ddtrain.fault.notice import FAULT_DIR_VAR, tell_launcher
from ddtrain.launcher.supervise import shell_code, supervise


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_the_child_exit_code_is_the_launcher_s_and_a_signal_reads_as_a_shell_reports_it(tmp_path):
    assert supervise(_python("import sys; sys.exit(7)"), dict(os.environ), tmp_path, 10.0) == 7
    killed = _python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert supervise(killed, dict(os.environ), tmp_path, 10.0) == 128 + signal.SIGKILL
    assert shell_code(-15) == 143 and shell_code(0) == 0


def test_a_stop_signal_reaches_the_child_once_and_the_handlers_are_restored(tmp_path):
    got = tmp_path / "got"
    ready = tmp_path / "ready"
    child = _python(
        "import signal, sys, time, pathlib\n"
        f"got = pathlib.Path({str(got)!r})\n"
        "def on(s, f): got.write_text(got.read_text() + 'x' if got.exists() else 'x')\n"
        "signal.signal(signal.SIGUSR1, on)\n"
        f"pathlib.Path({str(ready)!r}).write_text('1')\n"
        "end = time.time() + 1.5\n"
        "while time.time() < end: time.sleep(0.01)\n"
        "sys.exit(0 if got.exists() else 9)\n")

    def send_when_ready():
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)

    before = signal.getsignal(signal.SIGUSR1)
    threading.Thread(target=send_when_ready, daemon=True).start()
    assert supervise(child, dict(os.environ), tmp_path / "none", 10.0) == 0
    assert got.read_text() == "x"  # once: the child has a process group of its own
    assert signal.getsignal(signal.SIGUSR1) is before


def test_a_child_still_running_a_grace_period_after_a_failed_rank_s_note_is_stopped(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    env = {**os.environ, FAULT_DIR_VAR: str(notes)}
    child = _python("from ddtrain.fault.notice import tell_launcher; import time\n"
                    "tell_launcher(3)\ntime.sleep(60)\n")
    err = io.StringIO()
    t0 = time.monotonic()
    code = supervise(child, env, notes, 0.5, prog="ddtrain-launch", err=err)
    took = time.monotonic() - t0
    assert code == EXIT_PEER_FAILED
    assert took < 20, took  # the note, the grace, SIGTERM: not the child's 60 s
    line = err.getvalue().strip()
    assert "\n" not in line
    assert line.startswith("ddtrain-launch: error: a rank on this node failed (exit 3; ")
    assert "0.5 s later" in line and "trainer.resume=auto" in line


def test_a_note_is_left_only_for_a_non_zero_exit_and_only_where_the_directory_is(tmp_path, monkeypatch):
    monkeypatch.setenv(FAULT_DIR_VAR, str(tmp_path))
    tell_launcher(0)
    assert list(tmp_path.iterdir()) == []
    tell_launcher(3)
    assert [(p.name, p.read_text()) for p in tmp_path.iterdir()] == [(f"pid{os.getpid()}", "3")]
    monkeypatch.setenv(FAULT_DIR_VAR, str(tmp_path / "not-on-this-node"))
    tell_launcher(3)  # another node's directory: nothing, and no error
    monkeypatch.delenv(FAULT_DIR_VAR)
    tell_launcher(3)


@pytest.mark.parametrize("grace", ["-1", "nan"])
def test_a_bad_grace_period_is_refused_in_one_line(grace, capsys):
    from ddtrain.launcher import cli

    assert cli.main(["-n", "2", "--fault-grace-s", grace, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ddtrain-launch: error: --fault-grace-s {grace}: must be >= 0") and "\n" not in err
