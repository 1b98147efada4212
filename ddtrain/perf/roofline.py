"""A device's time for recorded ops, from the roofline: an op takes at least its FLOPs over the
device's peak for that op class and at least its bytes over the memory bandwidth, whichever is
longer (Williams, Waterman and Patterson, "Roofline", CACM 2009), divided by the fraction of that
bound the op class reaches on the device, plus a fixed cost per op (a kernel launch on a GPU,
the dispatcher on a CPU).

With every efficiency 1 and no per-op cost, the result is a lower bound on the step time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ddtrain.perf.opcount import PHASES, OpRecord


@dataclass(frozen=True)
class Roofline:
    name: str
    matmul_flops: float  # FLOP/s of dense matmuls in the step's dtype (a datasheet or a probe)
    memory_Bps: float  # bytes/s to and from device memory
    per_op_s: float = 0.0  # fixed cost of each op that runs a kernel
    # Fraction of the roofline bound each op class reaches (1: the bound itself).
    efficiency: dict[str, float] = field(default_factory=lambda: {
        "matmul": 1.0, "elementwise": 1.0, "reduction": 1.0})
    source: str = ""

    def op_time(self, r: OpRecord) -> float:
        if r.op_class == "view":
            return 0.0
        compute = r.flops / self.matmul_flops if r.flops else 0.0
        memory = r.bytes / self.memory_Bps
        return max(compute, memory) / self.efficiency.get(r.op_class, 1.0) + self.per_op_s

    def bound(self, r: OpRecord) -> str:
        """"compute" or "memory": which roof the op is under on this device."""
        return "compute" if r.flops / self.matmul_flops > r.bytes / self.memory_Bps else "memory"


def phase_times(records: Iterable[OpRecord], device: Roofline) -> dict[str, float]:
    """Seconds per phase (forward, backward, optimizer) of the recorded ops on ``device``."""
    out = dict.fromkeys(PHASES, 0.0)
    for r in records:
        out[r.phase] += device.op_time(r)
    return out
