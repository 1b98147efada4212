"""SIGTERM / SIGUSR1: finish the step, save a checkpoint on every rank's behalf, exit 0.

Slurm sends SIGTERM to every task when it preempts or cancels a job (and SIGUSR1 ahead of the
time limit with ``#SBATCH --signal=USR1@120``); Open MPI's ``mpirun`` forwards SIGUSR1 to its
ranks. A signal may reach only some ranks, and at different moments, so the handler only raises
a flag: the trainer folds it into the one small all-reduce it runs every step, and all ranks stop
after the same step. A second signal means "now": exit at once, without a checkpoint (the last
one on disk is intact: checkpoints are renamed into place only when complete).
"""

from __future__ import annotations

import os
import signal

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
EXIT_SECOND_SIGNAL = 143  # 128 + SIGTERM, what a shell reports for a process killed by it


class StopRequest:
    """Whether a stop signal has arrived. ``install()`` hooks the handlers (main thread only);
    ``uninstall()`` puts the previous ones back."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def request(self, name: str = "request") -> None:
        self.signal_name = name

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            # os.write, not print/logging: a handler can interrupt the main thread inside them.
            os.write(2, f"ddtrain: {name} again: exiting now, without a checkpoint\n".encode())
            os._exit(EXIT_SECOND_SIGNAL)
        self.signal_name = name
        os.write(2, f"ddtrain: {name} received: stopping after this step with a checkpoint "
                    f"(send it again to exit at once)\n".encode())

    def install(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
