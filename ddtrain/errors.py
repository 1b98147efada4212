"""How ddtrain stops on bad input: one line on stderr, a non-zero exit, nothing else."""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2


def fail(message: str, rank: int = 0) -> None:
    """Print ``ddtrain: error: <message>`` (rank 0 only, so N ranks don't say it N times), exit 2."""
    if rank == 0:
        print(f"ddtrain: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_BAD_INPUT)
