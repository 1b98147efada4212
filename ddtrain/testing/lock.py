"""One lock for timed work on a shared machine: benchmarks hold it while they measure, so two
measurements never share the CPUs (``flock /tmp/ddtrain-heavy.lock CMD`` takes the same lock)."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def held(path: str | Path | None) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` for the block; nothing when ``path`` is None."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
