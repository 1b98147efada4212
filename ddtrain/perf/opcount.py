"""What one training step asks of a device, op by op: the FLOPs, the bytes moved and the dtype
of every aten op it dispatches, and the phase (forward, backward, optimizer) it belongs to.

These counts, not a step time measured on some other machine, are what a roofline device model
needs: an op's time on a device is bounded by its FLOPs over the device's peak for that kind of
op and by its bytes over the memory bandwidth (Williams et al., "Roofline", CACM 2009). The
FLOPs of matmuls, convolutions and attention come from torch.utils.flop_counter's formulas; the
bytes are the sizes of each op's tensor inputs and outputs, read and written once, which is what
an op that does not fit in cache costs and what a fused or cached op beats.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

# Ops that only re-describe memory (or mark a profiler range): no data moves, no kernel runs.
_VIEWS = {"_record_function_enter_new", "_record_function_exit", "_local_scalar_dense",
          "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "as_strided",
          "detach", "alias", "squeeze", "unsqueeze", "slice", "select", "split", "split_with_sizes",
          "unbind", "lift_fresh", "_reshape_alias", "view_as", "expand_as", "contiguous"}
# Ops that reduce or normalise over a dimension: bound by memory, like elementwise ops, but a
# class of their own because their achieved bandwidth differs (a per-device efficiency).
_REDUCTIONS = {"sum", "mean", "norm", "linalg_vector_norm", "amax", "max", "min", "var", "std",
               "_softmax", "_log_softmax", "_softmax_backward_data", "_log_softmax_backward_data",
               "native_layer_norm", "native_layer_norm_backward", "native_group_norm",
               "native_group_norm_backward", "native_batch_norm", "native_batch_norm_backward",
               "nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward", "nll_loss2d_backward",
               "_foreach_norm", "cumsum", "argmax", "topk", "sort"}
OP_CLASSES = ("matmul", "elementwise", "reduction", "view")
PHASES = ("forward", "backward", "optimizer")


@dataclass(frozen=True)
class OpRecord:
    op: str  # aten name, e.g. "mm"
    op_class: str  # one of OP_CLASSES
    phase: str  # one of PHASES
    flops: int
    bytes: int  # tensor inputs read plus outputs written
    dtype: str  # of the op's first floating-point tensor ("" if none)


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def classify(op: str, has_flop_formula: bool) -> str:
    if has_flop_formula:
        return "matmul"
    if op in _VIEWS:
        return "view"
    if op in _REDUCTIONS:
        return "reduction"
    return "elementwise"


class OpRecorder(TorchDispatchMode):
    """Records every op dispatched while it is active; set ``phase`` between the phases."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.records: list[OpRecord] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        op = packet.__name__
        formula = flop_registry.get(packet)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        op_class = classify(op, formula is not None)
        inputs, outputs = _tensors((args, kwargs)), _tensors(out)
        moved = 0 if op_class == "view" else _nbytes(inputs) + _nbytes(outputs)
        floating = next((t.dtype for t in inputs + outputs if t.is_floating_point()), None)
        dtype = str(floating).removeprefix("torch.") if floating is not None else ""
        self.records.append(OpRecord(op, op_class, self.phase, flops, moved, dtype))
        return out


def record_step(model: torch.nn.Module, x, y, loss_fn, optimizer: torch.optim.Optimizer | None = None
                ) -> list[OpRecord]:
    """The ops of one training step: forward, backward and (if given) the optimizer's update.
    It changes the model's weights when an optimizer is given: pass a copy to keep them."""
    recorder = OpRecorder()
    with recorder:
        loss = loss_fn(model(x), y)
        recorder.phase = "backward"
        loss.backward()
        if optimizer is not None:
            recorder.phase = "optimizer"
            optimizer.step()
    return recorder.records


def totals(records: Iterable[OpRecord]) -> dict[tuple[str, str], dict[str, int]]:
    """(phase, op class) -> {"ops", "flops", "bytes"}: the summary a report prints."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for r in records:
        t = out.setdefault((r.phase, r.op_class), {"ops": 0, "flops": 0, "bytes": 0})
        t["ops"] += 1
        t["flops"] += r.flops
        t["bytes"] += r.bytes
    return out
