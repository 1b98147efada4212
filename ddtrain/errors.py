"""How ddtrain stops on bad input: one line on stderr, a non-zero exit, nothing else."""

from __future__ import annotations

import sys
import time

from ddtrain.fault.notice import tell_launcher

EXIT_BAD_INPUT = 2
EXIT_JOB_ERROR = 1  # a failure every rank detects alike (replica mismatch, divergence, NaN stop)
EXIT_PEER_FAILED = 3  # another rank died or raised; this one stopped because of it
# After an error every rank shares, a rank other than 0 waits this long before it exits: mpirun
# and torchrun end the whole job when its first rank fails, so rank 0 must be that rank, and exit
# only after it has printed. The launcher normally ends the wait by stopping the rank as soon as
# rank 0 has exited; the bound lets a rank that nobody stops exit all the same.
_QUIET_RANK_WAIT_S = 3.0


def report(message: str, rank: int = 0, *, same_on_all_ranks: bool = True) -> None:
    """Print ``ddtrain: error: <message>`` on stderr.

    ``same_on_all_ranks``: the error follows from input every rank shares (the config), so only
    rank 0 says it, and the other ranks wait (``_QUIET_RANK_WAIT_S``) to be stopped after it.
    Otherwise (a file missing on one node ...) every failing rank says it, tagged.
    """
    if not same_on_all_ranks:
        print(f"ddtrain: error: [rank {rank}] {message}", file=sys.stderr, flush=True)
    elif rank == 0:
        print(f"ddtrain: error: {message}", file=sys.stderr, flush=True)
    else:
        time.sleep(_QUIET_RANK_WAIT_S)


def one_line(exc: BaseException, *, typed: bool = True, limit: int = 500) -> str:
    """``exc`` as one line for ``report``: its message's non-blank lines, stripped and joined by
    "; ", cut at ``limit`` characters. ``typed`` puts the exception's type in front, for errors
    whose message alone does not say what failed (an OSError from a socket); without a message
    the type is the line."""
    text = "; ".join(ln.strip() for ln in str(exc).splitlines() if ln.strip())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    if not text:
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}" if typed else text


def fail(message: str, rank: int = 0, *, same_on_all_ranks: bool = True,
         exit_code: int = EXIT_BAD_INPUT) -> None:
    """``report`` the error and exit ``exit_code`` (2: bad input)."""
    report(message, rank, same_on_all_ranks=same_on_all_ranks)
    tell_launcher(exit_code)
    sys.exit(exit_code)


class BadSample(ValueError):
    """One sample of the data cannot be read (a file that does not decode, with the option to
    stop on it). It surfaces on the rank whose share holds the sample, mid-run, possibly inside
    a loader worker; that rank exits 2 with this one line, and the others stop naming it."""


def bad_sample_line(exc: BaseException) -> str:
    """A BadSample's own line. Re-raised from a loader worker, its message is torch's report
    ("Caught BadSample in DataLoader worker ... Original Traceback ..."), whose last line is the
    original exception as ``module.BadSample: message``."""
    last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    prefix = "BadSample: "
    return last.split(prefix, 1)[1] if prefix in last else last


class JobError(RuntimeError):
    """A failure every rank detects identically, from values all ranks share (a replica
    mismatch found through a collective, divergence, a non-finite gradient with
    ``trainer.on_nonfinite=stop``). Every rank raises it with the same one-line message; rank 0
    prints it and all ranks exit ``exit_code``, so the job stops without a hang."""

    exit_code = EXIT_JOB_ERROR
