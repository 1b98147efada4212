"""How many CPUs this machine offers: physical cores for mpirun's slots, logical CPUs for threads.

Two counts, for two questions. ``machine_slots``: how many ranks Open MPI places here.
``usable_cpus``: how many threads this process's torch pools may share.

Open MPI (PRRTE) counts one slot per core unless told ``--use-hwthread-cpus``, so on a machine
with 2 threads per core ``os.cpu_count()`` is twice the number of ranks mpirun accepts without
``--oversubscribe``. The counting is a pure function of a CPU -> core map; reading the map from
``/sys`` (or ``/proc/cpuinfo``) is the only part that looks at the machine.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path

SYS_CPU = Path("/sys/devices/system/cpu")
CPUINFO = Path("/proc/cpuinfo")


def count_cores(core_of: Mapping[int, Hashable]) -> int:
    """Distinct cores among the CPUs in ``core_of`` (cpu index -> (package, core) id)."""
    return len(set(core_of.values()))


def cores_from_cpuinfo(text: str) -> int | None:
    """Distinct (physical id, core id) pairs in /proc/cpuinfo; None when the file has no core ids
    (ARM kernels leave them out), so the caller can fall back to something else."""
    pairs: set[tuple[str, str]] = set()
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "core id" in fields:
            pairs.add((fields.get("physical id", "0"), fields["core id"]))
    return len(pairs) or None


def read_core_map(cpus: Iterable[int], sys_cpu: Path = SYS_CPU) -> dict[int, tuple[str, str]] | None:
    """cpu -> (physical_package_id, core_id) from sysfs for the given CPUs; None if unreadable."""
    core_of = {}
    for cpu in cpus:
        topo = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            core_of[cpu] = ((topo / "physical_package_id").read_text().strip(),
                            (topo / "core_id").read_text().strip())
        except OSError:
            return None
    return core_of or None


def allowed_cpus() -> list[int] | None:
    """The CPUs this process may run on (a container's or Slurm's cpuset), where the OS says."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return None


def usable_cpus() -> int:
    """Logical CPUs (hardware threads) this process may run on: its affinity mask, which a
    container, a Slurm cgroup or a launcher's binding narrows, else ``os.cpu_count()``, else 1.
    The count torch's intra-op threads share; ``machine_slots`` counts cores instead."""
    cpus = allowed_cpus()
    return len(cpus) if cpus else os.cpu_count() or 1


def machine_slots(*, sys_cpu: Path = SYS_CPU, cpuinfo: Path = CPUINFO,
                  cpus: Iterable[int] | None = None) -> int:
    """Physical cores available to this process: sysfs topology of the allowed CPUs, else
    /proc/cpuinfo, else ``os.cpu_count()``. That last one may count hardware threads; then a
    rank count between cores and threads gets no ``--oversubscribe`` and mpirun refuses it,
    saying so (``--mpi-args=--oversubscribe`` fixes it)."""
    cpus = allowed_cpus() if cpus is None else list(cpus)
    if cpus:
        core_of = read_core_map(cpus, sys_cpu)
        if core_of:
            return count_cores(core_of)
    try:
        found = cores_from_cpuinfo(cpuinfo.read_text())
    except OSError:
        found = None
    return found or os.cpu_count() or 1
