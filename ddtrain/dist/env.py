"""Which launcher started this process, and where it sits in the job.

``detect_launch_env`` is the only place in ddtrain that reads launcher variables (``RANK``,
``OMPI_COMM_WORLD_*``, ``PMI_*``, ``SLURM_*`` ...). It is a pure function of the mapping it is
given, so every launcher is unit-tested without MPI or Slurm installed.

Precedence matters because launchers nest: ``mpirun`` or ``torchrun`` inside an ``sbatch``
script inherit the batch step's ``SLURM_*`` variables, which describe the batch step and not
the rank. So torchrun and the MPI flavours are checked before Slurm, and Slurm counts only when
``srun`` started the process (``SLURM_STEP_ID`` is set for srun tasks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


class LaunchEnvError(RuntimeError):
    """The launcher's variables are inconsistent; the message names the variable."""


@dataclass(frozen=True)
class LaunchEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    node_rank: int = 0
    launcher: str = "single"  # single | openmpi | mpich | mvapich | slurm | torchrun
    master_addr: str | None = None  # set by torchrun, or exported by the user (e.g. in sbatch)
    master_port: int | None = None
    job_id: str | None = None  # the launcher's own job id, if it has one (Slurm, torchrun)
    agent_store: bool = False  # torchrun's agent already serves the store at MASTER_ADDR:PORT

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_mpi(self) -> bool:
        return self.launcher in ("openmpi", "mpich", "mvapich")

    @property
    def single_host(self) -> bool:
        # Every rank is on this node: Gloo can then be pinned to loopback, which avoids
        # hostname-based interface selection picking an unroutable interface.
        return self.local_world_size == self.world_size


# (launcher, marker variable, rank, world size, local rank, local world size)
_MPI_FLAVOURS = (
    ("openmpi", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE",
     "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
    # MPICH's Hydra and Intel MPI both export PMI_* and MPI_LOCAL*.
    ("mpich", "PMI_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
    ("mvapich", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE",
     "MV2_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_SIZE"),
)


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        if default is None:
            raise LaunchEnvError(f"{name} is not set but the launcher's other variables are")
        return default
    try:
        return int(raw)
    except ValueError:
        raise LaunchEnvError(f"{name}={raw!r} is not an integer") from None


def _tasks_on_node(environ: Mapping[str, str], node: int, world: int, nodes: int) -> int:
    """Tasks on node ``node`` from Slurm's compressed list, e.g. "2(x3),1" (uneven layouts)."""
    name = "SLURM_STEP_TASKS_PER_NODE" if "SLURM_STEP_TASKS_PER_NODE" in environ else "SLURM_TASKS_PER_NODE"
    spec = environ.get(name)
    if not spec:
        return max(1, world // max(1, nodes))
    try:
        counts: list[int] = []
        for part in spec.split(","):
            n, _, repeat = part.partition("(x")
            counts += [int(n)] * (int(repeat.rstrip(")")) if repeat else 1)
        return counts[node]
    except (ValueError, IndexError):
        raise LaunchEnvError(f"{name}={spec!r} does not list a task count for node {node}") from None


def _slurm_placement(environ: Mapping[str, str], world: int) -> tuple[int, int, int]:
    """(local rank, local world size, node index) of an srun task."""
    nodes = _int(environ, "SLURM_STEP_NUM_NODES", _int(environ, "SLURM_NNODES", 1))
    node = _int(environ, "SLURM_NODEID", 0)
    return _int(environ, "SLURM_LOCALID", 0), _tasks_on_node(environ, node, world, nodes), node


def detect_launch_env(environ: Mapping[str, str]) -> LaunchEnv:
    """Map the launcher's variables to a LaunchEnv. Pure: reads only ``environ``.

    torchrun first (it may run inside an MPI or Slurm job and sets its own ranks), then the MPI
    flavours, then a bare srun; none of them: one plain process.
    """
    addr = environ.get("MASTER_ADDR") or None
    port = _int(environ, "MASTER_PORT", 0) or None
    for detect in (_torchrun_env, _mpi_env, _slurm_env):
        env = detect(environ, addr, port)
        if env is not None:
            return env
    return LaunchEnv(master_addr=addr, master_port=port)


def _torchrun_env(environ: Mapping[str, str], addr: str | None, port: int | None) -> LaunchEnv | None:
    if not ("TORCHELASTIC_RUN_ID" in environ or ("LOCAL_RANK" in environ and "RANK" in environ)):
        return None
    rank, world = _int(environ, "RANK"), _int(environ, "WORLD_SIZE")
    local_world = _int(environ, "LOCAL_WORLD_SIZE", world)
    env = LaunchEnv(
        rank=rank,
        local_rank=_int(environ, "LOCAL_RANK"),
        world_size=world,
        local_world_size=local_world,
        node_rank=_int(environ, "GROUP_RANK", rank // local_world),
        launcher="torchrun",
        master_addr=addr,
        master_port=port,
        job_id=environ.get("TORCHELASTIC_RUN_ID"),
        agent_store=environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true",
    )
    return _checked(env, "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


def _mpi_env(environ: Mapping[str, str], addr: str | None, port: int | None) -> LaunchEnv | None:
    for name, marker, rank_v, size_v, lrank_v, lsize_v in _MPI_FLAVOURS:
        if marker not in environ:
            continue
        rank, world = _int(environ, rank_v), _int(environ, size_v)
        if lsize_v not in environ and "SLURM_STEP_ID" in environ:
            # srun --mpi=pmi2 exports PMI_RANK/PMI_SIZE but no local variables: the
            # placement is Slurm's.
            local_rank, local_world, node = _slurm_placement(environ, world)
        else:
            # Without a local size the launcher could not tell us the placement; assume
            # one rank per node, the conservative choice (no loopback pinning, device 0).
            local_world = _int(environ, lsize_v, 1)
            local_rank = _int(environ, lrank_v, 0)
            # MPI gives no node index; with the default block mapping it is rank // ppn.
            node = rank // local_world
        env = LaunchEnv(
            rank=rank,
            local_rank=local_rank,
            world_size=world,
            local_world_size=local_world,
            node_rank=node,
            launcher=name,
            master_addr=addr,
            master_port=port,
            job_id=environ.get("SLURM_JOB_ID"),
        )
        return _checked(env, rank_v, size_v, lrank_v, lsize_v)
    return None


def _slurm_env(environ: Mapping[str, str], addr: str | None, port: int | None) -> LaunchEnv | None:
    if not ("SLURM_PROCID" in environ and "SLURM_STEP_ID" in environ):
        return None
    world = _int(environ, "SLURM_STEP_NUM_TASKS", _int(environ, "SLURM_NTASKS", 1))
    local_rank, local_world, node = _slurm_placement(environ, world)
    env = LaunchEnv(
        rank=_int(environ, "SLURM_PROCID"),
        local_rank=local_rank,
        world_size=world,
        local_world_size=local_world,
        node_rank=node,
        launcher="slurm",
        master_addr=addr,
        master_port=port,
        job_id=f"{environ.get('SLURM_JOB_ID', '0')}.{environ['SLURM_STEP_ID']}",
    )
    return _checked(env, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID",
                    "SLURM_STEP_TASKS_PER_NODE")


def _checked(env: LaunchEnv, rank_var: str, size_var: str, lrank_var: str, lsize_var: str) -> LaunchEnv:
    if env.world_size < 1:
        raise LaunchEnvError(f"{size_var}={env.world_size} must be >= 1")
    if not 0 <= env.rank < env.world_size:
        raise LaunchEnvError(f"{rank_var}={env.rank} is outside {size_var}={env.world_size}")
    if env.local_world_size < 1 or not 0 <= env.local_rank < env.local_world_size:
        raise LaunchEnvError(
            f"{lrank_var}={env.local_rank} is outside {lsize_var}={env.local_world_size}"
        )
    return env
