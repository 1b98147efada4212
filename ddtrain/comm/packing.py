"""How the reducer copies gradients into its buckets and the averages back (``comm.pack``).

- ``torch``: each gradient's hook scales and casts it into its slot: one op per gradient, spread
  over backward (the reducer's own ``_fill``);
- ``triton``: hooks only count; when a bucket is complete, one launch fills all of it right before
  its all-reduce, and, where the comm dtype is not the parameters', one launch per bucket casts
  the averages back into ``p.grad`` (``ddtrain.kernels.packing``);
- ``auto``: ``triton`` where the parameters are on CUDA and Triton runs there, else ``torch``.

Both give bit-identical buckets (tests/gloo/test_packing_reducer.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ddtrain.comm.buckets import BucketPlan

PACK_MODES = ("auto", "triton", "torch")


def choose_packing(mode: str, device: torch.device, dtypes: set[torch.dtype]) -> tuple[str, str]:
    """``("triton" | "torch", why)``; raises where ``triton`` was asked for and cannot run."""
    if mode not in PACK_MODES:
        raise ValueError(f"pack={mode!r} is not allowed; choose one of: {', '.join(PACK_MODES)}")
    if mode == "torch":
        return "torch", "comm.pack=torch"
    if mode == "auto" and device.type != "cuda":
        return "torch", f"auto: parameters on {device.type}"
    # Imported here: Triton takes half a second to import, and a CPU run never needs it.
    from ddtrain.kernels import packing

    reason = packing.triton_unavailable(device)
    if reason is None and len(dtypes) > 1:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        reason = f"one launch reads one dtype and the parameters mix {names}"
    if reason is None:
        return "triton", "one launch per bucket" + (" (Triton interpreter)" if packing.INTERPRETED else "")
    if mode == "triton":
        raise ValueError(f"comm.pack=triton cannot run here: {reason}; or use comm.pack=auto")
    return "torch", f"auto: {reason}"


class TritonBuckets:
    """One ``BucketPacker`` per bucket of ``plan``, reading and writing the parameters' ``.grad``."""

    def __init__(self, plan: BucketPlan, buffers: Sequence[torch.Tensor], params: Sequence[torch.Tensor]):
        from ddtrain.kernels.packing import BucketPacker

        self.members = plan.members
        self.params = params
        self.packers = [
            BucketPacker([params[i].numel() for i in members], [plan.slots[i].offset for i in members],
                         buffer, use_triton=True)
            for members, buffer in zip(plan.members, buffers)
        ]

    def pack(self, bucket: int, scale: float) -> None:
        """Bucket <- every member's ``p.grad * scale``; a parameter without gradient sends zeros."""
        grads = []
        for i in self.members[bucket]:
            g = self.params[i].grad
            # The kernel reads flat memory in the parameter's logical order; a gradient in another
            # layout (channels_last ...) is copied into that order first, as reshape(-1) would.
            grads.append(g if g is None or g.is_contiguous() else g.contiguous())
        self.packers[bucket].pack(grads, scale)

    def unpack(self) -> None:
        """``p.grad`` <- the averages, cast to the parameters' dtype: one launch per bucket."""
        for members, packer in zip(self.members, self.packers):
            grads = []
            for i in members:
                p = self.params[i]
                if p.grad is None or not p.grad.is_contiguous():
                    p.grad = torch.empty(p.shape, dtype=p.dtype, device=p.device)
                grads.append(p.grad)
            packer.unpack(grads)
