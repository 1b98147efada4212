"""``ddtrain-launch`` as mpirun's parent: every stop signal passed on once, and a bound on how
long mpirun may go on after a rank of this node has failed.

mpirun normally ends a job within seconds of its first failed rank. When a node has vanished it
does not: it orders the lost node's daemon to kill its ranks and waits for an answer that only
the kernel's TCP retransmission limit ends (about 15 minutes at Linux's defaults). The ranks
themselves stop within ``comm.timeout_s``, and each rank that exits non-zero leaves a note in a
directory this process made (``FAULT_DIR_VAR``, set in mpirun's environment and not forwarded:
the ranks of this node inherit it, no other node has it). Once a note is older than the grace
period and mpirun is still running, mpirun is stopped, and the launch exits ``EXIT_PEER_FAILED``
with one line that says why.

mpirun runs in a process group of its own, so a terminal's Ctrl-C reaches it once, through this
process, rather than twice (a second SIGUSR1 or SIGTERM tells ddtrain's ranks to exit at once).
It also dies with this process (``PR_SET_PDEATHSIG``), as it would have when it replaced it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from ddtrain.errors import EXIT_PEER_FAILED
from ddtrain.fault.notice import FAULT_DIR_VAR

__all__ = ["FAULT_DIR_VAR", "supervise"]
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
DEFAULT_GRACE_S = 10.0
_KILL_AFTER_S = 5.0  # after SIGTERM, how long mpirun may take before SIGKILL
_PR_SET_PDEATHSIG = 1


def shell_code(returncode: int) -> int:
    """A child's exit as a shell reports it: 128 + N for a child killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def faults(fault_dir: Path) -> list[Path]:
    """The notes left by failed ranks of this node, oldest first."""
    try:
        notes = list(fault_dir.iterdir())
    except OSError:
        return []
    return sorted(notes, key=lambda p: p.stat().st_mtime if p.exists() else 0.0)


def _own_group_dying_with_parent() -> None:
    """In the child before exec: a process group of its own, and SIGTERM when its parent dies."""
    os.setpgid(0, 0)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def supervise(command: Sequence[str], env: dict[str, str], fault_dir: Path, grace_s: float, *,
              prog: str = "ddtrain-launch", poll_s: float = 0.2, err: TextIO | None = None) -> int:
    """Run ``command`` (mpirun's argv) to its end and return its exit code, or stop it
    ``grace_s`` after the first rank of this node failed, returning ``EXIT_PEER_FAILED``."""
    err = err or sys.stderr
    child = subprocess.Popen(list(command), env=env, stdin=subprocess.DEVNULL,
                             preexec_fn=_own_group_dying_with_parent)

    def forward(signum, _frame):
        if child.poll() is None:
            child.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        while True:
            try:
                return shell_code(child.wait(timeout=poll_s))
            except subprocess.TimeoutExpired:
                pass
            notes = faults(fault_dir)
            if notes and time.time() - notes[0].stat().st_mtime > grace_s:
                print(f"{prog}: error: a rank on this node failed (exit {_code(notes[0])}; its own "
                      f"error above names the cause) and {Path(command[0]).name} had not ended the job "
                      f"{grace_s:g} s later, as happens when a node is unreachable; stopping it. Fix: "
                      "bring the node back or leave it out of the hostfile, then rerun with "
                      "trainer.resume=auto", file=err, flush=True)
                _stop(child)
                return EXIT_PEER_FAILED
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _code(note: Path) -> str:
    try:
        return note.read_text().strip() or "?"
    except OSError:
        return "?"


def _stop(child: subprocess.Popen) -> None:
    child.terminate()
    try:
        child.wait(timeout=_KILL_AFTER_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
