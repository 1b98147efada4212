"""A device's time for recorded ops, from the roofline: an op takes at least its FLOPs over the
device's peak for that op class and at least its bytes over the memory bandwidth, whichever is
longer (Williams, Waterman and Patterson, "Roofline", CACM 2009), divided by the fraction of that
bound the op class reaches on the device, plus a fixed cost per op (a kernel launch on a GPU,
the dispatcher on a CPU).

With every efficiency 1 and no per-op cost, the result is a lower bound on the step time.

A recorded region (ddtrain/perf/opcount.py) that the device runs as one persistent kernel costs
what that kernel does: its FLOPs at the recurrent efficiency or its bytes once (the weights stay
on chip for the whole sequence), one launch, and a grid-wide barrier per time step. Otherwise its
ops cost one by one, as a GPU without room for the weights runs them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from ddtrain.perf.opcount import PHASES, OpRecord, Region

OP_EFFICIENCIES = ("matmul", "elementwise", "reduction", "optimizer", "recurrent")


def _ones() -> dict[str, float]:
    return dict.fromkeys(OP_EFFICIENCIES, 1.0)


@dataclass(frozen=True)
class Roofline:
    name: str
    matmul_flops: float  # FLOP/s of dense matmuls in the step's dtype (a datasheet or a probe)
    memory_Bps: float  # bytes/s to and from device memory
    per_op_s: float = 0.0  # fixed cost of each op that runs a kernel
    # Fraction of the roofline bound each op class reaches (1: the bound itself).
    efficiency: dict[str, float] = field(default_factory=_ones)
    # True on a GPU: the host queues kernels ahead of the device, so an op costs the longer of
    # its kernel and its launch, not their sum (a CPU runs the dispatcher and the op in turn).
    queued_launches: bool = False
    step_sync_s: float = 0.0  # a persistent kernel's grid-wide barrier, once per time step
    sm_count: int = 0  # what the recurrence planner needs to know (0: no persistent kernel)
    capability: int = 0  # CUDA compute capability x 10, for the planner's measured kernel figures
    source: str = ""

    def _launch(self, t: float) -> float:
        return max(t, self.per_op_s) if self.queued_launches else t + self.per_op_s

    def op_time(self, r: OpRecord) -> float:
        if r.op_class == "view":
            return 0.0
        memory = r.bytes / self.memory_Bps
        if r.op_class == "optimizer":
            # A GPU runs the update as a few multi-tensor kernels over all parameters: bytes only.
            per_op = 0.0 if self.queued_launches else self.per_op_s
            return memory / self.efficiency.get("optimizer", 1.0) + per_op
        compute = r.flops / self.matmul_flops if r.flops else 0.0
        return self._launch(max(compute, memory) / self.efficiency.get(r.op_class, 1.0))

    def bound(self, r: OpRecord) -> str:
        """"compute" or "memory": which roof the op is under on this device."""
        return "compute" if r.flops / self.matmul_flops > r.bytes / self.memory_Bps else "memory"

    def fused_time(self, ops: Sequence[OpRecord], steps: int) -> float:
        """One persistent kernel running ``ops`` over ``steps`` time steps."""
        compute = sum(r.flops for r in ops) / (self.matmul_flops * self.efficiency.get("recurrent", 1.0))
        memory = sum(r.fresh_bytes for r in ops) / self.memory_Bps
        return self._launch(max(compute, memory) + steps * self.step_sync_s)


def op_times(records: Sequence[OpRecord], device: Roofline, regions: Sequence[Region] = (),
             fused: Collection[int] = ()) -> list[float]:
    """Seconds of each record on ``device``. A region whose index is in ``fused`` (one the device
    runs as one kernel) costs ``Roofline.fused_time`` per phase, charged to its last op in that
    phase (so a running sum over the records stays right at every region boundary)."""
    times = [device.op_time(r) for r in records]
    groups: dict[tuple[int, str], list[int]] = {}
    for i, r in enumerate(records):
        if r.region in fused:
            groups.setdefault((r.region, r.phase), []).append(i)
    for (region, _phase), members in groups.items():
        for i in members:
            times[i] = 0.0
        times[members[-1]] = device.fused_time([records[i] for i in members], regions[region].info["steps"])
    return times


def phase_times(records: Iterable[OpRecord], device: Roofline, times: Sequence[float] | None = None
                ) -> dict[str, float]:
    """Seconds per phase (forward, backward, optimizer) of the recorded ops on ``device``
    (``times``: each record's seconds, when already worked out by ``op_times``)."""
    records = list(records)
    times = times if times is not None else [device.op_time(r) for r in records]
    out = dict.fromkeys(PHASES, 0.0)
    for r, t in zip(records, times, strict=True):
        out[r.phase] += t
    return out
