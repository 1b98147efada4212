"""What fraction of its roofs a GPU reaches, per op class and per device generation: the second
half of the roofline device model (ddtrain/perf/roofline.py), beside the peak table
(ddtrain/perf/peak.py) that gives the roofs themselves.

One table serves every model and every published case the model is checked against; nothing in
it is fitted to one case. Each generation's figures carry their source, and a figure no source
gives is marked ``assumption``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ddtrain.perf.peak import datasheet_peak_for, match_device, table_memory_bandwidth
from ddtrain.perf.roofline import Roofline

# Shared by every generation (no per-generation figure was found): PyTorch eager costs "~7
# microseconds for the simplest tensor operations" (pytorch/pytorch#41383, CPU tensors), and a
# tiny CUDA elementwise op "~7 us eager" (flagos-ai/FlagGems#4812).
_LAUNCH_S = 7e-6
# Assumptions, no source: a reduction or norm reaches 80% of the streaming rate; a persistent
# kernel's grid-wide barrier costs 1 us; the recurrent efficiency is the one published figure
# (Diamos et al. 2016 on Maxwell) wherever nothing newer is known.
_REDUCTION_SHARE = 0.8
_SYNC_S = 1e-6
_DIAMOS_RECURRENT = 0.45


@dataclass(frozen=True)
class Generation:
    name: str
    # Fraction of the datasheet matmul peak that large GEMMs reach, per peak dtype (tensor-core
    # dtypes and fp32 differ); the op class "matmul" takes the figure of the run's dtype.
    matmul: dict[str, float]
    memory: float  # fraction of datasheet bandwidth a streaming (copy, triad) kernel reaches
    sources: str
    recurrent: float = _DIAMOS_RECURRENT  # a persistent recurrent kernel at a small minibatch
    per_op_s: float = _LAUNCH_S  # host cost of one eager op: its launch
    step_sync_s: float = _SYNC_S  # one grid-wide barrier of a persistent kernel

    @property
    def reduction(self) -> float:
        """Reductions and norms make more passes and synchronise: a share of the streaming rate."""
        return self.memory * _REDUCTION_SHARE

    def efficiency(self, dtype: str) -> dict[str, float]:
        """The op-class efficiencies of roofline.Roofline for a run whose matmuls are ``dtype``."""
        return {"matmul": self.matmul.get(dtype, min(self.matmul.values())), "elementwise": self.memory,
                "reduction": self.reduction, "optimizer": self.memory, "recurrent": self.recurrent}


def _all_dtypes(fraction: float) -> dict[str, float]:
    return dict.fromkeys(("bf16", "fp16", "tf32", "fp32"), fraction)


_AMPERE = Generation(
    "ampere", _all_dtypes(0.869), memory=0.84,
    sources="GEMM: bf16 271 of 312 TFLOP/s, 86.9% (ml-engineering MAMF table, A100 SXM; tf32 and fp32 "
            "taken as bf16, no source); memory: BabelStream copy 1709 of 2039 GB/s (A100 80GB)")

# Every GPU generation the peak table holds. GEMM fractions: DeepBench (baidu-research/DeepBench
# results/train/*.xlsx, best large training GEMM) and the "Maximum Achievable Matmul FLOPS" table
# of stas00/ml-engineering (compute/accelerator/README.md). Bandwidth: BabelStream copy results.
GENERATIONS: dict[str, Generation] = {
    "maxwell": Generation(
        "maxwell", {"fp32": 0.85}, memory=0.80,
        sources="GEMM: DeepBench TITAN X, 5.2-5.9 TFLOP/s on large fp32 shapes of 6.14; recurrent: Diamos "
                "et al. 2016, 2.8 TFLOP/s, 'about 45% of theoretical peak' at minibatch 4; memory 0.80: "
                "assumption"),
    "pascal": Generation(
        "pascal", {"fp32": 0.86, "fp16": 0.86}, memory=0.80,
        sources="GEMM: DeepBench P100, best fp32 9.12 TFLOP/s (0.86 of the SXM2's 10.6; fp16 taken as "
                "fp32, no source); memory 0.80: assumption"),
    "volta": Generation(
        "volta", {"fp32": 0.94, "fp16": 0.90}, memory=0.87,
        sources="GEMM: DeepBench V100, fp32 14.78 of 15.7 TFLOP/s, fp16 tensor cores 112.3 of 125; memory: "
                "785 of 900 GB/s memcopy (AnjaliSandip/FastIceFlo), BabelStream 0.90-0.94 on V100 PCIe"),
    "ampere": _AMPERE,
    "ada": replace(_AMPERE, name="ada", sources="assumption: Ampere's figures (no Ada source found)"),
    "hopper": Generation(
        "hopper", _all_dtypes(0.803), memory=0.78,
        sources="GEMM: bf16 794.5 of 989 TFLOP/s, 80.3% (ml-engineering MAMF table, H100 SXM; tf32 and "
                "fp32 taken as bf16, no source); memory: BabelStream copy 3056 of 3900 GB/s (H100 NVL)"),
}

# Peak-table key -> (generation, streaming multiprocessors, CUDA compute capability x 10), from
# the same datasheets and NVIDIA's compute-capability table.
DEVICES: dict[str, tuple[str, int, int]] = {
    "h100_sxm": ("hopper", 132, 90), "h200": ("hopper", 132, 90), "h100_pcie": ("hopper", 114, 90),
    "h100_nvl": ("hopper", 132, 90), "a100": ("ampere", 108, 80), "a10": ("ampere", 72, 86),
    "l40s": ("ada", 142, 89), "l4": ("ada", 58, 89), "v100_sxm2": ("volta", 80, 70),
    "v100_pcie": ("volta", 80, 70),
    "p100_sxm2": ("pascal", 56, 60), "p100_pcie": ("pascal", 56, 60), "titanx_maxwell": ("maxwell", 24, 52),
}


def device_roofline(device: str, precision: str) -> Roofline:
    """The roofline of a datasheet GPU (a peak-table key or CUDA name) running at ``precision``:
    its matmul peak in the dtype a run there uses, its memory bandwidth, and its generation's
    efficiencies and per-op costs."""
    key = match_device(device)
    peak = datasheet_peak_for(device, precision)  # raises for an unknown device, naming the known ones
    generation, sms, capability = DEVICES[key]
    g = GENERATIONS[generation]
    return Roofline(
        name=f"{key} {peak.dtype}", matmul_flops=peak.flops, memory_Bps=table_memory_bandwidth(key),
        per_op_s=g.per_op_s, efficiency=g.efficiency(peak.dtype), queued_launches=True,
        step_sync_s=g.step_sync_s, sm_count=sms, capability=capability,
        source=f"{peak.source}; {generation} efficiencies ({g.sources})")
