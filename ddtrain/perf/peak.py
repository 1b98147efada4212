"""Peak FLOP/s of the device a worker runs on: a datasheet table for known GPUs, a measured
matmul probe for everything else. Whichever it is, the result says so (``Peak.measured``).

All table figures are DENSE (no 2:4 structured sparsity): NVIDIA datasheets for Ampere and
later print the sparse figure with an asterisk, which is twice the dense one. ``bf16``/``fp16``
mean tensor-core matmuls with fp32 accumulation; ``tf32`` the tensor-core path torch uses for
fp32 matmuls when ``torch.backends.cuda.matmul.allow_tf32`` is on; ``fp32`` the CUDA cores.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

DTYPES = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class Peak:
    flops: float  # FLOP/s of one worker (one GPU, or one CPU rank's share of cores)
    device: str  # what the figure is for: a table key or the probed device's name
    dtype: str
    measured: bool  # True: an achievable peak from the matmul probe, not a datasheet figure
    source: str  # the datasheet, or how the probe ran

    @property
    def label(self) -> str:
        kind = "measured" if self.measured else "datasheet"
        return f"{self.device} {self.dtype} {self.flops / 1e12:.3g} TFLOP/s ({kind})"


@dataclass(frozen=True)
class _Entry:
    tflops: dict[str, float]  # dtype -> dense TFLOP/s
    source: str


# Dense TFLOP/s. A dtype missing from an entry has no fast path on that device (no bf16 before
# Ampere, no tensor cores before Volta): asking for it is an error, never a guess.
PEAK_TABLE: dict[str, _Entry] = {
    # NVIDIA H100 Tensor Core GPU datasheet (2023): SXM5 FP32 67, TF32 989*, BF16/FP16 1979*
    # (* with sparsity; dense is half). H200 datasheet: same compute as H100 SXM, more memory.
    "h100_sxm": _Entry({"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, "H100 datasheet, SXM5"),
    "h200": _Entry({"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4}, "H200 datasheet, SXM"),
    # H100 datasheet, PCIe: FP32 51, TF32 756*, BF16/FP16 1513*; NVL (94 GB): FP32 60, TF32 835*,
    # BF16/FP16 1671*. (The NVL figures are as recalled; not re-checked against the sheet here.)
    "h100_pcie": _Entry({"fp32": 51.2, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5}, "H100 datasheet, PCIe"),
    "h100_nvl": _Entry({"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}, "H100 datasheet, NVL"),
    # NVIDIA A100 datasheet: FP32 19.5, TF32 156 (312*), BF16/FP16 312 (624*); SXM and PCIe alike.
    "a100": _Entry({"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}, "A100 datasheet"),
    # NVIDIA V100 datasheet: SXM2 FP32 15.7, tensor (FP16) 125; PCIe FP32 14, tensor 112. No BF16/TF32.
    "v100_sxm2": _Entry({"fp32": 15.7, "fp16": 125.0}, "V100 datasheet, SXM2"),
    "v100_pcie": _Entry({"fp32": 14.0, "fp16": 112.0}, "V100 datasheet, PCIe"),
    # NVIDIA L40S datasheet: FP32 91.6, TF32 366*, BF16/FP16 733* (362 dense).
    "l40s": _Entry({"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05}, "L40S datasheet"),
    # NVIDIA A10 datasheet: FP32 31.2, TF32 62.5 (125*), BF16/FP16 125 (250*). FP32 checked; the
    # tensor-core figures are as recalled, not re-checked here.
    "a10": _Entry({"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}, "A10 datasheet"),
    # NVIDIA L4 datasheet: FP32 30.3, TF32 120*, BF16/FP16 242*. TF32 checked; the rest as
    # recalled, not re-checked here.
    "l4": _Entry({"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}, "L4 datasheet"),
    # Tesla P100 datasheet: SXM2 FP32 10.6, FP16 21.2; PCIe FP32 9.3, FP16 18.7 (no tensor cores).
    "p100_sxm2": _Entry({"fp32": 10.6, "fp16": 21.2}, "P100 datasheet, SXM2"),
    "p100_pcie": _Entry({"fp32": 9.3, "fp16": 18.7}, "P100 datasheet, PCIe"),
    # GeForce GTX TITAN X (Maxwell GM200, 2015): 3072 CUDA cores x 2 FLOP/FMA x 1.0 GHz base
    # clock = 6.14 TFLOP/s FP32 (6.6 at the 1.075 GHz boost). 6.14 is the figure Diamos et al.
    # (2016) use: they call 2.8 TFLOP/s "about 45% of theoretical peak". No fast FP16 on GM200.
    "titanx_maxwell": _Entry({"fp32": 6.14}, "GTX TITAN X: 3072 cores x 2 x 1.0 GHz base clock"),
}

# Memory bandwidth, GB/s, from the same datasheets: the roofline's other roof (ddtrain/perf/
# roofline.py). A key covering several memory configurations takes the one named here.
MEMORY_GBPS: dict[str, float] = {
    "h100_sxm": 3350.0,  # H100 SXM5 80 GB HBM3: 3.35 TB/s
    "h200": 4800.0,  # H200 141 GB HBM3e: 4.8 TB/s
    "h100_pcie": 2000.0,  # H100 PCIe 80 GB HBM2e: 2 TB/s
    "h100_nvl": 3900.0,  # H100 NVL 94 GB HBM3: 3.9 TB/s
    "a100": 2039.0,  # A100 80 GB SXM HBM2e: 2,039 GB/s (the 40 GB PCIe card: 1,555 GB/s)
    "v100_sxm2": 900.0,  # V100 HBM2: 900 GB/s (SXM2 and PCIe alike)
    "v100_pcie": 900.0,
    "l40s": 864.0,  # L40S 48 GB GDDR6: 864 GB/s
    "a10": 600.0,  # A10 24 GB GDDR6: 600 GB/s
    "l4": 300.0,  # L4 24 GB GDDR6: 300 GB/s
    "p100_sxm2": 732.0,  # P100 16 GB HBM2: 732 GB/s (the 12 GB PCIe card: 549 GB/s)
    "p100_pcie": 732.0,
    "titanx_maxwell": 336.5,  # GM200: 384-bit GDDR5 at 7 Gb/s per pin = 336.5 GB/s
}

# torch.cuda.get_device_name() -> table key. Order matters: the first match wins, so variants
# (NVL, PCIe) come before the plain name, and "A10" must not match "A100" or "A10G".
_NAME_PATTERNS: list[tuple[str, str]] = [
    # A MIG slice ("NVIDIA A100-SXM4-40GB MIG 1g.5gb") has a fraction of the GPU: no datasheet
    # figure is its own, so it is probed; so is the H200 NVL, which the table does not hold.
    (r"\bmig\b", ""),
    (r"\bh200\b.*\bnvl\b", ""),
    (r"\bh100\b.*\bnvl\b", "h100_nvl"),
    (r"\bh100\b.*\bpcie\b", "h100_pcie"),
    (r"\bh100\b", "h100_sxm"),
    (r"\bh200\b", "h200"),
    (r"\ba100\b", "a100"),
    (r"\bv100\b.*\bpcie\b", "v100_pcie"),
    (r"\bv100\b", "v100_sxm2"),
    (r"\bl40s\b", "l40s"),
    (r"\ba10\b", "a10"),
    (r"\bl4\b", "l4"),
    (r"\bp100\b.*\bpcie\b", "p100_pcie"),
    (r"\bp100\b", "p100_sxm2"),
    (r"^(nvidia )?geforce gtx titan x$", "titanx_maxwell"),
]


class PeakError(ValueError):
    pass


def match_device(name: str) -> str | None:
    """The table key for a device name, or None when the table does not know it."""
    low = name.strip().lower().replace("-", " ").replace("_", " ")
    if low in PEAK_TABLE or low.replace(" ", "_") in PEAK_TABLE:
        return low.replace(" ", "_")
    for pattern, key in _NAME_PATTERNS:
        if re.search(pattern, low):
            return key or None
    return None


def table_peak(name: str, dtype: str) -> Peak:
    """The datasheet peak for ``name`` (a table key or a CUDA device name) and ``dtype``."""
    if dtype not in DTYPES:
        raise PeakError(f"dtype={dtype!r} is not allowed; choose one of: {', '.join(DTYPES)}")
    key = match_device(name)
    if key is None:
        raise PeakError(
            f"no datasheet peak for device {name!r}; known: {', '.join(PEAK_TABLE)} "
            "(or let ddtrain measure it: peak=auto)"
        )
    entry = PEAK_TABLE[key]
    if dtype not in entry.tflops:
        raise PeakError(
            f"{key} has no {dtype} fast path (has: {', '.join(entry.tflops)}); "
            "pick another precision or let ddtrain measure it: peak=auto"
        )
    return Peak(entry.tflops[dtype] * 1e12, key, dtype, measured=False, source=entry.source)


def table_memory_bandwidth(name: str) -> float:
    """Bytes/s of device memory for ``name`` (a table key or a CUDA device name), datasheet."""
    key = match_device(name)
    if key is None:
        raise PeakError(f"no datasheet memory bandwidth for device {name!r}; known: {', '.join(MEMORY_GBPS)}")
    return MEMORY_GBPS[key] * 1e9


_TORCH_DTYPE = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _time_matmul(a: torch.Tensor, b: torch.Tensor, seconds: float) -> float:
    """Best FLOP/s of ``a @ b`` over repeated runs lasting about ``seconds``."""
    n, k = a.shape
    flop = 2.0 * n * k * b.shape[1]
    cuda = a.device.type == "cuda"
    for _ in range(2):  # warm-up: first-call allocation, cuBLAS heuristics, page faults
        a @ b
    best = 0.0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        reps = 10 if cuda else 1
        if cuda:
            torch.cuda.synchronize()  # deliberate: the probe times the device, not the launch
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if cuda:
            torch.cuda.synchronize()
        best = max(best, reps * flop / (time.perf_counter() - t0))
    return best


def probe_peak(device: torch.device, dtype: str, *, sizes: tuple[int, ...] | None = None,
               seconds: float = 0.2) -> Peak:
    """An achievable peak: the best square-matmul rate over a few sizes, on this worker's share
    of the device (CPU: the torch threads this process has). Labelled as measured everywhere.

    It is a lower bound on the true peak, so a workload that beats it means the probe ran too
    short or on a busier machine; ``fraction_of_peak`` refuses such a result rather than
    printing a fraction above 1.
    """
    if dtype not in DTYPES:
        raise PeakError(f"dtype={dtype!r} is not allowed; choose one of: {', '.join(DTYPES)}")
    cuda = device.type == "cuda"
    sizes = sizes or ((2048, 4096, 8192) if cuda else (256, 512, 1024))
    tdtype = _TORCH_DTYPE[dtype]
    gen = torch.Generator(device="cpu").manual_seed(0)
    best = 0.0
    prev = _matmul_precision()
    try:
        _set_matmul_precision("tf32" if dtype == "tf32" else "ieee")
        for n in sizes:
            a = torch.randn(n, n, generator=gen).to(device=device, dtype=tdtype)
            b = torch.randn(n, n, generator=gen).to(device=device, dtype=tdtype)
            best = max(best, _time_matmul(a, b, seconds))
    finally:
        _set_matmul_precision(prev)
    if cuda:
        name = torch.cuda.get_device_name(device)
        how = f"best square matmul of n in {list(sizes)}"
    else:
        name = f"cpu ({torch.get_num_threads()} threads)"
        how = f"best square matmul of n in {list(sizes)} with {torch.get_num_threads()} threads"
    return Peak(best, name, dtype, measured=True, source=f"measured: {how}")


def peak_dtype(device: torch.device, precision: str) -> str:
    """Which peak a run should be held against: bf16 autocast -> bf16; fp32 -> tf32 when torch
    lets CUDA matmuls use TF32, else fp32."""
    if precision == "bf16":
        return "bf16"
    if device.type == "cuda" and _matmul_precision() == "tf32":
        return "tf32"
    return "fp32"


def _matmul_precision() -> str:
    """"tf32" or "ieee": how CUDA fp32 matmuls run. torch 2.9 added ``fp32_precision`` and made
    reading the older ``allow_tf32`` an error once the new setting is used, so the new one is
    read first ("none" there means the older flag decides)."""
    new = getattr(torch.backends.cuda.matmul, "fp32_precision", "none")
    if new in ("tf32", "ieee"):
        return new
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _set_matmul_precision(value: str) -> None:
    if getattr(torch.backends.cuda.matmul, "fp32_precision", "none") != "none":
        torch.backends.cuda.matmul.fp32_precision = value
    else:
        torch.backends.cuda.matmul.allow_tf32 = value == "tf32"


def resolve_peak(device: torch.device, precision: str, override: str = "auto") -> Peak:
    """The peak for this worker. ``override``: ``auto`` (datasheet for a known GPU, probe
    otherwise), ``measure`` (always probe), or a table key / device name (datasheet, for a
    device you are not running on; an unknown name is an error, never a fallback)."""
    dtype = peak_dtype(device, precision)
    if override == "measure":
        return probe_peak(device, dtype)
    if override != "auto":
        return table_peak(override, dtype)
    if device.type == "cuda":
        key = match_device(torch.cuda.get_device_name(device))
        if key is not None and dtype in PEAK_TABLE[key].tflops:
            return table_peak(key, dtype)
    return probe_peak(device, dtype)


def datasheet_peak_for(device: str, precision: str) -> Peak:
    """The datasheet peak a run would be held to on ``device`` (a GPU it does not run on):
    bf16 -> bf16 (fp16 on GPUs without bf16), fp32 -> tf32 where the GPU has it (torch's
    default for matmuls there), else fp32."""
    key = match_device(device)
    if key is None:
        return table_peak(device, "fp32")  # raises, naming the known devices
    order = ("bf16", "fp16", "fp32") if precision == "bf16" else ("tf32", "fp32")
    return table_peak(key, next(d for d in order if d in PEAK_TABLE[key].tflops))
