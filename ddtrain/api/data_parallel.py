"""``DataParallel``: a drop-in for torch's DistributedDataParallel, on ddtrain's reducer.

The loop stays the user's: ``loss_fn(model(x), y).backward(); opt.step(); opt.zero_grad()``.
Gradient buckets are all-reduced while backward runs (``comm/reducer.py``); the wait for the
last ones is queued on the autograd engine from the first gradient hook of each backward, as
DDP does it, so the averaged gradients are in ``p.grad`` when ``backward()`` returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ddtrain.api.context import init
from ddtrain.comm.reducer import GradReducer


class DataParallel(nn.Module):
    """Wrap ``module`` (already on this rank's device) for data-parallel training.

    Rank 0's parameters and buffers are broadcast to every rank here. ``bucket_mb`` and
    ``first_bucket_mb`` size the gradient buckets (the first small, so communication starts
    early); ``comm_dtype`` (fp32 | bf16 | fp16) is the dtype gradients travel in. At world size 1
    nothing is added: the wrapper only calls the module.

    ``state_dict()`` and ``load_state_dict()`` are the module's own, without a ``module.``
    prefix, so a checkpoint saved from the wrapper loads into the bare module and back.
    Any optimizer works; ``zero_grad(set_to_none=False)`` too: with fp32 communication the
    gradients are views of the buckets, and zeroing them in place is what the next step expects.
    """

    def __init__(self, module: nn.Module, *, bucket_mb: float = 25.0, first_bucket_mb: float = 1.0,
                 comm_dtype: str = "fp32", pack: str = "auto"):
        super().__init__()
        ctx = init()
        wrong = sorted({str(p.device) for p in module.parameters() if p.device != ctx.device})
        if wrong:
            raise ValueError(f"the module's parameters are on {', '.join(wrong)}, this rank's device is "
                             f"{ctx.device}; fix: module.to(ddtrain.init().device) before wrapping it")
        self.module = module
        self.world_size = ctx.world_size
        self._reducer: GradReducer | None = None
        self._queued = False
        if ctx.world_size > 1:
            self._reducer = GradReducer(module, world_size=ctx.world_size, bucket_mb=bucket_mb,
                                        first_bucket_mb=first_bucket_mb, comm_dtype=comm_dtype, pack=pack)
            # Registered after the reducer's own hooks, so each parameter's slot is filled first.
            self._hooks = [p.register_post_accumulate_grad_hook(self._queue_wait)
                           for p in self._reducer.params]

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @contextlib.contextmanager
    def no_sync(self) -> Iterator[None]:
        """Backward passes inside accumulate gradients locally; the next one outside averages the
        sum over ranks (gradient accumulation communicates once per optimizer step)."""
        if self._reducer is None:
            yield
            return
        with self._reducer.no_sync():
            yield

    def _queue_wait(self, _param: torch.Tensor) -> None:
        if not self._queued:
            self._queued = True
            # Runs once backward has finished, before backward() returns to the caller.
            torch.autograd.Variable._execution_engine.queue_callback(self._finish)

    def _finish(self) -> None:
        self._queued = False
        self._reducer.wait()

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)
