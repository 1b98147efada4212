"""ddtrain's gradient reducer: bucketed all-reduce, launched while backward is still running.

Life of one synchronised step:
  1. backward runs; as each parameter's gradient is final (a post-accumulate-grad hook), it is
     scaled by 1/world_size and cast into its slot of a flat bucket buffer (one fused op), or,
     with ``comm.pack=triton``, counted, and the whole bucket is filled by one launch when its
     last gradient arrives (``comm/packing.py``);
  2. when a bucket's last slot is filled, its all-reduce is launched asynchronously, provided
     every earlier bucket has been launched: collectives must be issued in the same order on
     every rank, and the bucket index is that order (DDP's reducer keeps the same rule);
  3. ``wait()`` (after backward returns) launches what is left, waits for all, and hands the
     averaged gradients back to ``p.grad``.

Scaling before the reduce (rather than after) keeps fp16 sums from overflowing.
During gradient accumulation (``no_sync()``) hooks return at once: gradients accumulate locally
in ``p.grad`` and the last micro-step's hooks send the accumulated sum.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ddtrain.comm.buckets import MiB, plan_buckets, slot_views
from ddtrain.comm.packing import TritonBuckets, choose_packing

log = logging.getLogger(__name__)

COMM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def broadcast_module(module: nn.Module, src: int = 0, group=None) -> None:
    """Make every replica start identical: rank ``src``'s parameters and buffers win.

    Tensors are flattened per dtype so that this is a handful of broadcasts, not hundreds.
    """
    tensors = [p.data for p in module.parameters()] + [b for b in module.buffers()]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group_tensors in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group_tensors])
        dist.broadcast(flat, src=src, group=group)
        offset = 0
        for t in group_tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


class GradReducer:
    def __init__(
        self,
        module: nn.Module,
        *,
        world_size: int,
        bucket_mb: float,
        first_bucket_mb: float,
        comm_dtype: str = "fp32",
        pack: str = "auto",
        group=None,
        on_event: Callable[[str, int], None] | None = None,
    ):
        self.group = group
        self.world_size = world_size
        self.comm_dtype = COMM_DTYPES[comm_dtype]
        # on_event("grad", param_index) / ("launch", bucket_index): lets tests observe overlap.
        self._on_event = on_event

        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no trainable parameters to reduce")
        devices = {p.device for _, p in named}
        if len(devices) > 1:
            raise ValueError(f"all parameters must be on one device, found {sorted(map(str, devices))}")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]

        broadcast_module(module, group=group)

        elsize = torch.empty((), dtype=self.comm_dtype).element_size()
        self.plan = plan_buckets(
            [p.numel() for p in self.params], elsize, bucket_mb * MiB, first_bucket_mb * MiB
        )
        device = self.params[0].device
        self.buffers = self._bucket_buffers(device)
        # The slot views are made once; the hot path only indexes lists.
        self.slot_views = slot_views(self.buffers, self.plan)
        self._pack_mode = pack
        self.packing, why = choose_packing(pack, device, {p.dtype for p in self.params})
        log.info("gradient packing: %s (%s)", self.packing, why)
        # None: each hook fills its own slot (packing "torch").
        self._triton = None
        if self.packing == "triton":
            self._triton = TritonBuckets(self.plan, self.buffers, self.params)
        self._sync = True
        self._warned_unused = False
        self._reset()
        self._hooks = [
            p.register_post_accumulate_grad_hook(self._make_hook(i)) for i, p in enumerate(self.params)
        ]

    def _bucket_buffers(self, device: torch.device) -> list[torch.Tensor]:
        """One flat buffer per bucket, in the comm dtype, that the gradients are copied into."""
        return [torch.empty(n, dtype=self.comm_dtype, device=device) for n in self.plan.sizes]

    # ------------------------------------------------------------------ step state
    def _reset(self) -> None:
        self._pending = [len(m) for m in self.plan.members]
        self._filled = [False] * len(self.params)
        self._works: list = []
        self._next = 0  # the next bucket to launch, in index order

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate locally and communicate nothing."""
        previous, self._sync = self._sync, False
        try:
            yield
        finally:
            self._sync = previous

    # ------------------------------------------------------------------ hot path
    def _make_hook(self, idx: int):
        def hook(param: torch.Tensor) -> None:
            if not self._sync:
                return
            if self._filled[idx]:
                raise RuntimeError(
                    f"parameter '{self.names[idx]}' received a second gradient in one synchronised "
                    "step; run extra backward passes inside reducer.no_sync() (trainer.grad_accum)"
                )
            if self._triton is None:
                self._fill(idx, param.grad)
            self._filled[idx] = True  # with Triton packing, _launch_ready fills the whole bucket
            if self._on_event is not None:
                self._on_event("grad", idx)
            bucket = self.plan.slots[idx].bucket
            self._pending[bucket] -= 1
            if bucket == self._next and self._pending[bucket] == 0:
                self._launch_ready()

        return hook

    def _fill(self, idx: int, grad: torch.Tensor | None) -> None:
        view = self.slot_views[idx]
        if grad is None:
            view.zero_()
        else:
            # Scale and cast in one kernel: the bucket then holds grad / world_size in comm dtype.
            torch.mul(grad.reshape(-1), 1.0 / self.world_size, out=view)
        # In the bucket now, so the full gradient is dropped at once and the next one reuses its
        # memory. A gradient kept to the end of backward holds its pages until zero_grad, so the
        # next backward faults in fresh ones, which on CPU ranks beside Gloo's threads costs more
        # than the all-reduces themselves (BENCHMARKS.md). wait() leaves the averaged bucket
        # slice in .grad.
        self.params[idx].grad = None

    def _launch_ready(self) -> None:
        while self._next < len(self.plan) and self._pending[self._next] == 0:
            if self._triton is not None:
                self._pack_bucket(self._next)
            self._works.append(self._launch(self._next))
            if self._on_event is not None:
                self._on_event("launch", self._next)
            self._next += 1

    def _launch(self, bucket: int):
        return dist.all_reduce(self.buffers[bucket], group=self.group, async_op=True)

    def _pack_bucket(self, bucket: int) -> None:
        try:
            self._triton.pack(bucket, 1.0 / self.world_size)
        except Exception as exc:  # e.g. the kernel does not compile for this GPU / Triton
            if self._pack_mode != "auto":
                raise
            # comm.pack=auto must not cost the run: fall back to the per-gradient copies for good.
            # Gradients already counted but not packed (this bucket and any later one) are
            # filled now; hooks from here on fill their own slots.
            log.warning("gradient packing: the Triton launch failed (%s); using torch copies from "
                        "now on (set comm.pack=torch to silence this)", str(exc).splitlines()[0][:200])
            self._triton, self.packing = None, "torch"
            for later in self.plan.members[bucket:]:
                for idx in later:
                    if self._filled[idx]:
                        self._fill(idx, self.params[idx].grad)

    # ------------------------------------------------------------------ after backward
    def wait(self) -> None:
        """Finish this step's communication and leave averaged gradients in ``p.grad``."""
        if not self._sync:
            return
        if self._next < len(self.plan):
            self._complete_unfinished()
        for work in self._works:
            work.wait()
        if self._triton is not None and self.comm_dtype != self.params[0].dtype:
            self._triton.unpack()  # cast back, one launch per bucket (one dtype: choose_packing)
        else:
            for p, view in zip(self.params, self.slot_views):
                averaged = view.view_as(p)
                # In the parameter's dtype the gradient *is* the bucket slice, no copy back;
                # zero_grad() (set_to_none) drops this alias before the next backward refills the
                # bucket. Otherwise it is cast back into a tensor of its own (the local gradient
                # was dropped when it was filled in).
                p.grad = averaged if view.dtype == p.dtype else averaged.to(p.dtype)
        self._reset()

    def _complete_unfinished(self) -> None:
        """Some parameters got no gradient this step (unused branch, frozen input ...).

        Their slots carry whatever ``p.grad`` holds (earlier micro-steps' sum) or zeros, so the
        bucket still completes and every rank issues the same collectives: no hang.
        """
        missing = [i for i, filled in enumerate(self._filled) if not filled]
        if missing and not self._warned_unused:
            names = ", ".join(self.names[i] for i in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            log.warning(
                "no gradient this step for %s%s; reduced as zero on this rank (warned once)",
                names, more,
            )
            self._warned_unused = True
        for idx in missing:
            if self._triton is None:  # else the bucket's launch reads p.grad, None as zeros
                self._fill(idx, self.params[idx].grad)
            self._filled[idx] = True  # counted: a Triton fallback must fill it too
            self._pending[self.plan.slots[idx].bucket] -= 1
        self._launch_ready()

    def remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def describe(self) -> str:
        mib = [n * self.buffers[0].element_size() / MiB for n in self.plan.sizes]
        return (
            f"{len(self.params)} tensors in {len(self.plan)} bucket(s) "
            f"({', '.join(f'{m:.2f}' for m in mib)} MiB, {str(self.comm_dtype).removeprefix('torch.')}), "
            f"packed by {self.packing}"
        )
