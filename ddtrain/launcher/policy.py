"""The one launch policy: how every ddtrain job is started on N ranks, by mpirun or srun.

``launch_command`` is pure: given the launcher, the MPI flavour, the rank count, the program
and what is known of this machine (root or not, its physical cores), it returns the full argv.
``resolve_target`` finds those facts once (which mpirun, which MPI, root, cores, the child
environment) and returns a ``Target`` whose ``command(n, program)`` is that argv.

ddtrain-launch (and through it every launch/ script) and ddtrain-scale's worker jobs both go
through ``resolve_target`` and ``launch_command``, so a study's workers run with exactly the
binding, flags and forwarded variables of a user's job.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ddtrain.launcher.cores import machine_slots
from ddtrain.launcher.flavour import FLAVOURS, LaunchError, detect_flavour, exported_names
from ddtrain.launcher.mpirun import (
    LauncherNotFound,
    child_env,
    find_mpirun,
    mpirun_argv,
    running_as_root,
    srun_argv,
)

LAUNCHERS = ("mpirun", "srun")

# srun's flags for every ddtrain job step. --kill-on-bad-exit: one rank failing ends the step
# instead of leaving the others waiting in a collective. --mpi=none: no PMI variables, so each
# rank reads Slurm's own (SLURM_PROCID ...) and meets the others at MASTER_ADDR:MASTER_PORT.
SRUN_FLAGS = ("--kill-on-bad-exit=1", "--mpi=none")

# Hydra's hostfile flag per flavour (see flavour.py's docstring for why Intel differs).
_HYDRA_HOSTFILE_FLAG = {"mpich": "-f", "intel": "-machinefile"}

_VERSION_TIMEOUT_S = 60


def launch_command(
    launcher: str,
    n: int | None,
    program: Sequence[str],
    *,
    flavour: str | None = "openmpi",
    hostfile: str | None = None,
    environ: Mapping[str, str] | None = None,
    is_root: bool = False,
    slots: int | None = None,
    mpirun: str = "mpirun",
    extra: Sequence[str] = (),
) -> list[str]:
    """The argv that starts ``program`` on ``n`` ranks through ``launcher`` (mpirun | srun).

    mpirun: the flags of ``flavour`` (see flavour.py); ``environ`` is the environment mpirun
    runs with (the forwarded variables are picked from it), ``slots`` this machine's physical
    cores (Open MPI without a hostfile only).
    srun: ``SRUN_FLAGS``; ``n`` None runs every task of the allocation; srun passes its whole
    environment to every task itself, so nothing is forwarded by name.
    ``extra``: launcher flags passed through verbatim, after ddtrain's own.
    """
    if launcher == "srun":
        if hostfile:
            raise LaunchError(f"hostfile {hostfile!r} is for mpirun; under srun the allocation "
                              "decides the nodes; fix: leave the hostfile out")
        return srun_argv(n, program, extra=[*SRUN_FLAGS, *extra])
    if launcher != "mpirun":
        raise LaunchError(f"launcher {launcher!r} is not known; choose one of: {', '.join(LAUNCHERS)}")
    if flavour not in FLAVOURS:
        raise LaunchError(f"MPI flavour {flavour!r} is not known; choose one of: {', '.join(FLAVOURS)}")
    if n is None:
        raise LaunchError("mpirun needs the number of ranks; fix: e.g. -n 2")
    if n < 1:
        raise LaunchError(f"-n {n}: the number of ranks must be >= 1; fix: e.g. -n 2")
    environ = environ or {}
    if flavour == "openmpi":
        flags = ["--allow-run-as-root"] if is_root else []
        # Open MPI binds each rank to a single core by default. A PyTorch rank is
        # multi-threaded (intra-op pool, data loading, NCCL/Gloo progress threads), and
        # pinning all of it to one core starves those threads; slot mapping then places ranks
        # in order, filling a node before the next. Horovod's runner passes the same pair.
        flags += ["--bind-to", "none", "--map-by", "slot"]
        for name in exported_names(environ):
            flags += ["-x", name]  # value taken from mpirun's own environment
        return mpirun_argv(n, program, mpirun=mpirun, hostfile=hostfile, slots=slots,
                           extra=[*flags, *extra])
    # Hydra (MPICH, Intel MPI): no root check and no slot limit, so neither flag exists there.
    argv = [mpirun, "-n", str(n)]
    if hostfile:
        argv += [_HYDRA_HOSTFILE_FLAG[flavour], hostfile]
    for name in exported_names(environ):
        argv += ["-genv", name, environ[name]]
    return [*argv, *extra, *program]


@dataclass(frozen=True)
class Target:
    """What ``launch_command`` needs besides ``n`` and the program, found once per launch."""

    launcher: str  # mpirun | srun
    flavour: str | None  # the MPI flavour; None under srun
    mpirun: str  # the mpirun executable; unused under srun
    hostfile: str | None
    is_root: bool
    slots: int | None  # physical cores here: Open MPI without a hostfile only
    env: dict[str, str]  # the environment the launcher runs with
    extra: tuple[str, ...] = ()

    def command(self, n: int | None, program: Sequence[str]) -> list[str]:
        return launch_command(self.launcher, n, program, flavour=self.flavour, hostfile=self.hostfile,
                              environ=self.env, is_root=self.is_root, slots=self.slots,
                              mpirun=self.mpirun, extra=self.extra)


def resolve_target(
    launcher: str,
    *,
    environ: Mapping[str, str],
    mpi: str = "auto",
    mpirun: str | None = None,
    hostfile: str | None = None,
    extra: Sequence[str] = (),
    dry_run: bool = False,
) -> Target:
    """Look at this machine once: the launcher's executable, the MPI flavour (``mpi``: auto asks
    ``mpirun --version``), root, the physical cores, and the child environment."""
    if launcher not in LAUNCHERS:
        raise LaunchError(f"launcher {launcher!r} is not known; choose one of: {', '.join(LAUNCHERS)}")
    is_root = running_as_root()
    env = child_env(environ, is_root=is_root, launcher=launcher)
    if launcher == "srun":
        return Target("srun", None, "srun", hostfile, is_root, None, env, tuple(extra))
    path = locate_mpirun(mpirun, mpi, dry_run)
    flavour = ask_flavour(path) if mpi == "auto" else mpi
    # Only Open MPI without a hostfile limits ranks to this machine's cores.
    slots = machine_slots() if flavour == "openmpi" and not hostfile else None
    return Target("mpirun", flavour, path, hostfile, is_root, slots, env, tuple(extra))


def locate_mpirun(explicit: str | None, flavour: str, dry_run: bool) -> str:
    """The mpirun to use: ``explicit`` if given, else the one ``find_mpirun`` finds."""
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise LaunchError(f"--mpirun {explicit!r} is not an executable; fix: give the path of "
                              "your MPI's mpirun, or leave --mpirun out")
        return found
    try:
        return find_mpirun()
    except LauncherNotFound as e:
        if dry_run and flavour != "auto":
            return "mpirun"  # printing a command needs no MPI when the flavour is given
        raise LaunchError(str(e)) from None


def ask_flavour(mpirun: str) -> str:
    """The flavour of ``mpirun``, from its ``--version`` output."""
    try:
        proc = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                              timeout=_VERSION_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise LaunchError(f"could not run '{mpirun} --version' ({type(e).__name__}: {e}); "
                          f"fix: name the flavour with --mpi={'|'.join(FLAVOURS)}") from None
    text = proc.stdout + proc.stderr
    flavour = detect_flavour(text)
    if flavour is None:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        raise LaunchError(f"cannot tell which MPI {mpirun} is from its --version output {first!r}; "
                          f"fix: name it with --mpi={'|'.join(FLAVOURS)}")
    return flavour
