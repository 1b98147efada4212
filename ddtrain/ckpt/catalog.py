"""A directory of checkpoints: ``step-00000100.ckpt`` ..., newest first, bad ones skipped.

Only names ``step-<8+ digits>.ckpt`` are checkpoints; the writer's hidden temporaries
(``.step-00000100.ckpt.tmp-<pid>``) and anything else a user leaves there are ignored, except by
``remove_stale_temps``, which deletes the temporaries a crashed writer left behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ddtrain.ckpt.file import CheckpointError, load, read_verified

_CHECKPOINT_NAME = re.compile(r"step-(\d{8,})\.ckpt")
_TEMP_NAME = re.compile(r"\.step-\d{8,}\.ckpt\.tmp-\d+")


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    if step < 0:
        raise ValueError(f"checkpoint step is {step}; steps count from 0")
    return Path(directory) / f"step-{step:08d}.ckpt"


def _files(directory: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return [entry for entry in entries if entry.is_file()]
    except FileNotFoundError:
        return []


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``directory``, newest step first; [] if it is missing."""
    directory = Path(directory)
    found = []
    for entry in _files(directory):
        match = _CHECKPOINT_NAME.fullmatch(entry.name)
        # Only the name checkpoint_path gives: step-000000100.ckpt would shadow step-00000100.ckpt.
        if match and checkpoint_path(directory, int(match.group(1))).name == entry.name:
            found.append((int(match.group(1)), directory / entry.name))
    return sorted(found, reverse=True)


def _newest(directory, warn: Callable[[str], None], read: Callable[[Path], Any]):
    for step, path in list_checkpoints(directory):
        try:
            return step, path, read(path)
        except CheckpointError as e:
            warn(f"skipping {path}: {e.reason}")
    return None


def newest_valid(
    directory: str | os.PathLike, warn: Callable[[str], None]
) -> tuple[int, Path, bytes] | None:
    """(step, path, file bytes) of the newest checkpoint whose header, length and checksum hold.

    Nothing is unpickled: a file with a correct checksum and a hostile payload passes here and is
    refused by ``decode``. Each skipped file gets one ``warn`` line.
    """
    return _newest(directory, warn, read_verified)


def newest_loadable(
    directory: str | os.PathLike, warn: Callable[[str], None]
) -> tuple[int, Path, dict] | None:
    """(step, path, state) of the newest checkpoint that also passes the weights-only unpickler."""
    return _newest(directory, warn, load)


def prune(directory: str | os.PathLike, keep: int) -> list[Path]:
    """Delete all but the ``keep`` highest-step checkpoints; return the deleted paths, newest first.

    It goes by step, not validity: after resuming from an older checkpoint past a bad newer one,
    call ``set_aside_newer`` first, or the bad file counts as one of the ``keep``.
    """
    if keep < 1:
        raise ValueError(f"keep is {keep}; keep at least 1 checkpoint (the one just written)")
    removed = [path for _, path in list_checkpoints(directory)[keep:]]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def set_aside_newer(directory: str | os.PathLike, step: int) -> list[Path]:
    """Rename checkpoints with a step above ``step`` to ``<name>.skipped``: after resuming from
    ``step`` those are the bad files that were skipped, and left in place they would outrank new
    saves in ``prune``. Renamed, not deleted: a file someone wants to inspect is never lost."""
    moved = []
    for s, path in list_checkpoints(directory):
        if s > step:
            target = path.with_name(path.name + ".skipped")
            path.replace(target)
            moved.append(target)
    return moved


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete temporaries a crashed writer left; call it only while no writer is running."""
    directory = Path(directory)
    removed = [directory / e.name for e in _files(directory) if _TEMP_NAME.fullmatch(e.name)]
    for path in removed:
        path.unlink(missing_ok=True)
    return sorted(removed)
