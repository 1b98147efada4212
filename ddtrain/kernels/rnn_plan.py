"""Which path runs a recurrence, decided on the host before anything is launched, from the
shape, the GPU and what the compiled kernels measurably need (kernel_resources.json).

The persistent kernel splits the recurrent matrix U (gates*H rows of H) by hidden unit across
programs; each program loads its slice once and keeps it in registers for all T steps, and all
programs meet at a grid-wide barrier between steps. That only works when
  * every program is resident at once (programs <= SMs, one program per SM): a program that has
    to wait for a free SM would wait for a barrier that can never complete;
  * each slice fits on chip: gates x rows x H x element size within a share of the register file
    (Diamos et al. 2016 keep the weights in registers the same way; spilling them to local
    memory would re-read them every step, which is what the step-wise path does anyway).
When either fails we fall back, and say why in one line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

KiB = 1024
# Share of the register file the weight slice may take; the rest holds h, partial sums, pointers.
# A starting value, not a tuned one: change it with `onchip_fraction`.
ONCHIP_FRACTION = 0.75
MAX_PERSISTENT_BATCH = 64  # beyond this the step is a real GEMM and cuDNN's tiling wins
MATMULS = ("fma", "dot")
# How a recurrent layer may run; the names model.path accepts ("auto": the planner picks).
PATHS = ("auto", "persistent", "stepwise", "cudnn", "reference")


@dataclass(frozen=True)
class Device:
    """What the planner needs to know about the GPU (from torch.cuda.get_device_properties)."""

    sm_count: int
    regs_per_sm: int = 65536  # 32-bit registers: 64K on every NVIDIA GPU since Kepler
    capability: int = 0  # compute capability x 10 (90: Hopper); 0: unknown, nothing measured
    shared_per_block: int = 0  # bytes of shared memory one block may take (opt-in); 0: unknown


# What the kernels compiled for each architecture need (registers, stack, local memory), as
# ``python -m ddtrain.kernels.offline --write`` measures them from the cubins; tests/compile checks
# that this file matches the kernels as they are.
RESOURCES_FILE = Path(__file__).with_name("kernel_resources.json")
# Bytes per thread a persistent kernel may keep on its stack and still count as on chip. The
# compiled kernels put spills in the stack frame (cuobjdump's STACK; LOCAL stays 0): up to 32 bytes
# (8 registers) are a few spilled temporaries that L1 holds, while the weight slice is hundreds of
# bytes per thread, so a larger stack means the slice itself is re-read every step.
SPILL_ALLOWANCE = 32


@functools.cache
def _rows() -> tuple[dict, ...]:
    return tuple(json.loads(RESOURCES_FILE.read_text())) if RESOURCES_FILE.is_file() else ()


def _key(r: dict) -> tuple:
    return (r["capability"], r["gates"], r["element_size"], r["mm"], r["h_pad"], r["block_h"], r["num_warps"])


@functools.cache
def _measured() -> dict[tuple, int]:
    """(capability, gates, element size, mm, H_PAD, block_h, warps) -> the most bytes per thread
    that any compiled persistent recurrence kernel of that shape keeps outside its registers."""
    out: dict[tuple, int] = {}
    for r in _rows():
        if r["path"] == "persistent":
            out[_key(r)] = max(out.get(_key(r), 0), r["stack"] + r["local"])
    return out


@functools.cache
def _measured_shared() -> dict[tuple, int]:
    """(path, capability, gates, element size, mm, H_PAD, block_h, warps) -> the most shared
    memory per block (static and dynamic) that a compiled recurrence kernel of that shape asks for."""
    out: dict[tuple, int] = {}
    for r in _rows():
        key = (r["path"], *_key(r))
        out[key] = max(out.get(key, 0), r["shared"])
    return out


def _shape(device: Device, gates: int, element_size: int, mm: str, hidden: int, block_h: int,
           num_warps: int) -> tuple:
    """The table's key (``_key``) of a shape planned for ``device``."""
    return (device.capability, gates, element_size, mm, max(16, _pow2_ceil(hidden)), block_h, num_warps)


def measured_spill(device: Device, gates: int, element_size: int, mm: str, hidden: int, block_h: int,
                   num_warps: int) -> int | None:
    """Bytes per thread the compiled persistent kernel spills at this shape on ``device``'s
    architecture (0: none), or None when that shape was not compiled for it."""
    return _measured().get(_shape(device, gates, element_size, mm, hidden, block_h, num_warps))


def measured_shared(device: Device, gates: int, element_size: int, plan: Plan, hidden: int) -> int | None:
    """Bytes of shared memory per block the compiled kernel of ``plan`` asks for on ``device``'s
    architecture, or None when that shape was not compiled for it."""
    shape = _shape(device, gates, element_size, plan.mm, hidden, plan.block_h, plan.num_warps)
    return _measured_shared().get((plan.path, *shape))


@dataclass(frozen=True)
class Plan:
    path: str  # persistent | stepwise | cudnn | reference
    block_h: int = 0  # hidden units per program (a power of two; the last program is masked)
    programs: int = 0
    num_warps: int = 4
    reason: str = ""
    mm: str = "fma"  # fma (CUDA cores, row by row) | dot (tensor cores, batch padded to 16)


def _pow2_ceil(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, n))))


def slice_bytes(hidden: int, gates: int, block_h: int, element_size: int) -> int:
    """On-chip bytes one program holds: its rows of every gate, padded to a power-of-two width."""
    return gates * block_h * _pow2_ceil(hidden) * element_size


def warps_for(tile_bytes: int) -> int:
    """Enough warps that the slice takes about 64 registers per thread (4 to 16 warps)."""
    per_warp = 32 * 64 * 4
    return int(min(16, max(4, _pow2_ceil(math.ceil(tile_bytes / per_warp)))))


def plan_recurrence(
    *,
    hidden: int,
    batch: int,
    gates: int,
    element_size: int,
    device: Device | None,
    want: str = "auto",
    triton_ok: bool = True,
    triton_reason: str = "",
    onchip_fraction: float = ONCHIP_FRACTION,
    stepwise_block: int = 16,
    mm: str = "fma",
    measured: bool = True,
) -> Plan:
    """Pick persistent, step-wise, cuDNN or the reference loop for one layer's recurrence.
    ``measured``: also refuse a persistent shape whose compiled kernel spills on the device's
    architecture (kernel_resources.json), and a tensor-core (dot) kernel that asks for more
    shared memory than the device has (it keeps its operands there; the CUDA-core kernel runs
    instead); False gives the candidate from the budget alone."""
    args = dict(hidden=hidden, batch=batch, gates=gates, element_size=element_size, device=device, want=want,
                triton_ok=triton_ok, triton_reason=triton_reason, onchip_fraction=onchip_fraction,
                stepwise_block=stepwise_block, measured=measured)
    plan = _plan(**args, mm=mm)
    if not (measured and mm == "dot" and plan.path in ("persistent", "stepwise")):
        return plan
    need = measured_shared(device, gates, element_size, plan, hidden) if device.shared_per_block else None
    if need is not None and need > device.shared_per_block:
        fma = _plan(**args, mm="fma")
        why = (f"the tensor-core (dot) kernel compiled for sm_{device.capability} asks for {need // KiB} KiB "
               f"of shared memory per block, over this GPU's {device.shared_per_block // KiB} KiB: CUDA-core "
               "(fma) kernel")
        return _with_reason(fma, f"{why}; {fma.reason}")
    if plan.path == "stepwise" and want == "auto":
        # One launch per time step costs more than the tensor cores gain at a small minibatch
        # (docs/BENCHMARKS.md, the recurrent kernels on an H200): a persistent CUDA-core kernel wins.
        fma = _plan(**args, mm="fma")
        if fma.path == "persistent":
            return _with_reason(fma, f"persistent CUDA-core (fma) kernel, not the step-wise tensor-core one "
                                     f"({plan.reason}); {fma.reason}")
    return plan


def _plan(*, hidden: int, batch: int, gates: int, element_size: int, device: Device | None, want: str,
          triton_ok: bool, triton_reason: str, onchip_fraction: float, stepwise_block: int, mm: str,
          measured: bool) -> Plan:
    if want not in PATHS:
        raise ValueError(f"rnn path {want!r} is unknown; choose one of {', '.join(PATHS)}")
    if mm not in MATMULS:
        raise ValueError(f"rnn mm {mm!r} is unknown; choose one of {', '.join(MATMULS)}")
    if hidden < 1 or batch < 1:
        raise ValueError(f"hidden ({hidden}) and batch ({batch}) must be positive")
    without_kernels = _without_triton_kernels(want, device, triton_ok, triton_reason)
    if without_kernels is not None:
        return without_kernels

    min_block = 16 if mm == "dot" else 2  # tl.dot needs 16 columns
    stepwise_block = max(stepwise_block, min_block)
    stepwise = Plan(
        "stepwise",
        block_h=stepwise_block,
        programs=math.ceil(hidden / stepwise_block),
        num_warps=warps_for(slice_bytes(hidden, gates, stepwise_block, element_size)),
        mm=mm,
    )
    if want == "stepwise":
        return _with_reason(stepwise, "stepwise requested")
    if batch > MAX_PERSISTENT_BATCH and want == "auto":
        return Plan("cudnn", reason=f"batch {batch} > {MAX_PERSISTENT_BATCH}: a GEMM per step, cuDNN")

    # Fewest rows per program such that every program gets an SM of its own.
    block_h = max(min_block, _pow2_ceil(math.ceil(hidden / device.sm_count)))
    programs = math.ceil(hidden / block_h)
    need = slice_bytes(hidden, gates, block_h, element_size)
    budget = int(onchip_fraction * device.regs_per_sm * 4)
    if need > budget:
        why = (
            f"U slice {need // KiB} KiB per SM > on-chip budget {budget // KiB} KiB "
            f"(hidden {hidden}, {gates} gate(s), {element_size}-byte elements, {device.sm_count} SMs)"
        )
        if want == "persistent":
            raise ValueError(f"persistent path impossible: {why}; use a 2-byte dtype or path=stepwise")
        return _with_reason(stepwise, f"{why}: step-wise kernel")
    warps = warps_for(need)
    spill = measured_spill(device, gates, element_size, mm, hidden, block_h, warps) if measured else None
    if spill is not None and spill > SPILL_ALLOWANCE:
        why = (f"the persistent kernel compiled for sm_{device.capability} keeps {spill} bytes per thread "
               f"outside its registers at this shape (hidden {hidden}, {gates} gate(s), {element_size}-byte "
               "elements), so U would be re-read every step")
        if want == "persistent":
            raise ValueError(f"persistent path impossible: {why}; use path=stepwise")
        return _with_reason(stepwise, f"{why}: step-wise kernel")
    if not measured or spill == 0:
        measured_note = ""
    elif spill is None:
        measured_note = "; its resource use was not measured for this GPU"
    else:
        measured_note = f"; {spill} bytes per thread spilled, within the {SPILL_ALLOWANCE}-byte allowance"
    return Plan(
        "persistent",
        block_h=block_h,
        programs=programs,
        num_warps=warps,
        reason=(f"persistent: {programs} programs x {block_h} units, {need // KiB} KiB of U each"
                f"{measured_note}"),
        mm=mm,
    )


def _without_triton_kernels(want: str, device: Device | None, triton_ok: bool,
                            triton_reason: str) -> Plan | None:
    """The plan when the request, the device or Triton rules out the Triton kernels; else None."""
    if want == "reference":
        return Plan("reference", reason="reference path requested")
    if want == "cudnn":  # torch's own module: cuDNN on CUDA, torch's CPU kernel elsewhere
        return Plan("cudnn", reason="cudnn requested")
    if device is None:
        if want == "auto":
            return Plan("reference", reason="no CUDA device: plain-torch time loop")
        raise ValueError(f"rnn path {want!r} needs a CUDA GPU; use path=auto or reference on CPU")
    if not triton_ok:
        if want != "auto":
            raise RuntimeError(f"rnn path {want!r} needs Triton ({triton_reason}); pip install triton")
        return Plan("cudnn", reason=f"Triton unavailable ({triton_reason}): cuDNN")
    return None


def _with_reason(plan: Plan, reason: str) -> Plan:
    return dataclasses.replace(plan, reason=reason)
