"""A rank that exits non-zero leaves a note for ``ddtrain-launch`` (``launcher/supervise.py``),
which bounds mpirun's wait on a node that can no longer be reached."""

from __future__ import annotations

import os
from pathlib import Path

FAULT_DIR_VAR = "DDTRAIN_FAULT_DIR"


def tell_launcher(code: int) -> None:
    """Note this rank's non-zero exit code in the launcher's directory, when there is one here.
    Only the launch node has it: elsewhere (or without ddtrain-launch) this does nothing, and
    mpirun hears of that rank's exit through its own daemon."""
    where = os.environ.get(FAULT_DIR_VAR)
    if not where or code == 0:
        return
    try:
        Path(where, f"pid{os.getpid()}").write_text(str(code))
    except OSError:
        pass  # not the launch node, or the launch is over
