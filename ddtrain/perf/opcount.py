"""What one training step asks of a device, op by op: the FLOPs, the bytes moved and the dtype
of every aten op it dispatches, and the phase (forward, backward, optimizer) it belongs to.

These counts, not a step time measured on some other machine, are what a roofline device model
needs: an op's time on a device is bounded by its FLOPs over the device's peak for that kind of
op and by its bytes over the memory bandwidth (Williams et al., "Roofline", CACM 2009). The
FLOPs of matmuls, convolutions and attention come from torch.utils.flop_counter's formulas; the
bytes are the sizes of each op's tensor inputs and outputs, read and written once, which is what
an op that does not fit in cache costs and what a fused or cached op beats.

A region (``region``) marks ops that one fused kernel runs on a GPU: a persistent recurrence
is one kernel for the whole sequence, its weights read once, where the plain loop recorded here
runs a dozen ops per time step. Inside a region an op's ``fresh_bytes`` are those of the inputs
from outside the region that it is the first to read: what one fused kernel reads from memory,
once, while everything the region makes along the way (gates, per-step weight gradients) stays
on chip. A device model then costs the region either as that one kernel or op by op, whichever
the device would run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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
# The optimizer's ops are a class of their own: on a GPU they run as a few multi-tensor
# (foreach) kernels over all parameters, not one kernel per recorded op.
OP_CLASSES = ("matmul", "elementwise", "reduction", "optimizer", "view")
PHASES = ("forward", "backward", "optimizer")


@dataclass(frozen=True)
class OpRecord:
    op: str  # aten name, e.g. "mm"
    op_class: str  # one of OP_CLASSES
    phase: str  # one of PHASES
    flops: int
    bytes: int  # tensor inputs read plus outputs written
    dtype: str  # of the op's first floating-point tensor ("" if none)
    region: int = -1  # index into OpRecorder.regions, -1 outside any region
    # In a region: the bytes of the inputs from outside the region that this op is the first of
    # its region to read (outside regions: 0, unused).
    fresh_bytes: int = 0


@dataclass(frozen=True)
class Region:
    """Ops one fused kernel runs on a GPU, e.g. ``kind="recurrence"`` with ``info`` holding
    steps, hidden, batch, gates, element_size and the model's path."""

    kind: str
    info: dict = field(default_factory=dict)


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def classify(op: str, has_flop_formula: bool, phase: str = "forward") -> str:
    if has_flop_formula:
        return "matmul"
    if op in _VIEWS:
        return "view"
    if phase == "optimizer":
        return "optimizer"
    if op in _REDUCTIONS:
        return "reduction"
    return "elementwise"


_ACTIVE: list[OpRecorder] = []




class OpRecorder(TorchDispatchMode):
    """Records every op dispatched while it is active; set ``phase`` between the phases."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = "forward"
        self.records: list[OpRecord] = []
        self.regions: list[Region] = []
        self._region = -1
        # Storages the current region has read or made, by address; held, so no address is
        # reused by a new storage while the region lasts.
        self._touched: dict[int, torch.UntypedStorage] = {}

    def __enter__(self):
        _ACTIVE.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        op = packet.__name__
        formula = flop_registry.get(packet)
        flops = int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0
        op_class = classify(op, formula is not None, self.phase)
        inputs, outputs = _tensors((args, kwargs)), _tensors(out)
        moved = 0 if op_class == "view" else _nbytes(inputs) + _nbytes(outputs)
        fresh = self._first_reads(inputs, outputs) if self._region >= 0 else 0
        floating = next((t.dtype for t in inputs + outputs if t.is_floating_point()), None)
        dtype = str(floating).removeprefix("torch.") if floating is not None else ""
        self.records.append(OpRecord(op, op_class, self.phase, flops, moved, dtype, self._region, fresh))
        return out

    def _first_reads(self, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> int:
        """Bytes of the inputs from outside the current region not yet read in it; the outputs
        are marked as made inside it."""
        moved = 0
        for t in inputs:
            storage = t.untyped_storage()
            if storage._cdata not in self._touched:
                self._touched[storage._cdata] = storage
                moved += storage.nbytes()
        for t in outputs:
            storage = t.untyped_storage()
            self._touched.setdefault(storage._cdata, storage)
        return moved

    def _enter_region(self, index: int) -> None:
        self._region, self._touched = index, {}

    def _leave_region(self) -> None:
        self._region, self._touched = -1, {}

    def run_region(self, kind: str, fn: Callable[[], tuple], grad_input: torch.Tensor, info: dict) -> tuple:
        """``fn()`` as one region, forward and backward: its backward ops are those autograd
        runs from the moment the gradient of ``fn``'s first output arrives until the gradient of
        ``grad_input`` (the region's differentiable input) is complete."""
        index = len(self.regions)
        self.regions.append(Region(kind, dict(info)))
        self._enter_region(index)
        try:
            out = fn()
        finally:
            self._leave_region()
        if grad_input.requires_grad and out[0].requires_grad:
            out[0].register_hook(lambda g: self._enter_region(index))
            grad_input.register_hook(lambda g: self._leave_region())
        return out


def region(kind: str, fn: Callable[[], tuple], grad_input: torch.Tensor, **info) -> tuple:
    """``fn()``, recorded as one region when an OpRecorder is active (else just ``fn()``).
    Model code marks what one fused GPU kernel runs with it; see the module's docstring."""
    if not _ACTIVE:
        return fn()
    return _ACTIVE[-1].run_region(kind, fn, grad_input, info)


@dataclass(frozen=True)
class StepOps:
    """One recorded training step: its ops, its regions, and for each trainable parameter (in
    ``model.parameters()`` order) how many ops had run when its gradient was complete."""

    records: list[OpRecord]
    regions: list[Region]
    grad_ready_at: list[int]


def record_step(model: torch.nn.Module, x, y, loss_fn, optimizer: torch.optim.Optimizer | None = None
                ) -> StepOps:
    """The ops of one training step: forward, backward and (if given) the optimizer's update.
    It changes the model's weights when an optimizer is given: pass a copy to keep them."""
    recorder = OpRecorder()
    params = [p for p in model.parameters() if p.requires_grad]
    ready = [-1] * len(params)

    def hook_for(i: int):
        def hook(_p):
            ready[i] = len(recorder.records)
        return hook

    handles = [p.register_post_accumulate_grad_hook(hook_for(i)) for i, p in enumerate(params)]
    try:
        with recorder:
            loss = loss_fn(model(x), y)
            recorder.phase = "backward"
            loss.backward()
            backward_end = len(recorder.records)
            if optimizer is not None:
                recorder.phase = "optimizer"
                optimizer.step()
    finally:
        for h in handles:
            h.remove()
    # A parameter the loss does not reach gets no gradient: it is "ready" when backward ends.
    ready = [backward_end if r < 0 else r for r in ready]
    return StepOps(recorder.records, recorder.regions, ready)


def totals(records: Iterable[OpRecord]) -> dict[tuple[str, str], dict[str, int]]:
    """(phase, op class) -> {"ops", "flops", "bytes"}: the summary a report prints."""
    out: dict[tuple[str, str], dict[str, int]] = {}
    for r in records:
        t = out.setdefault((r.phase, r.op_class), {"ops": 0, "flops": 0, "bytes": 0})
        t["ops"] += 1
        t["flops"] += r.flops
        t["bytes"] += r.bytes
    return out
