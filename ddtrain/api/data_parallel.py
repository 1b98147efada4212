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
from ddtrain.comm.engines import build_engine
from ddtrain.comm.reducer import GradReducer
from ddtrain.comm.shards import SHARD_MODES
from ddtrain.config import CommConfig


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

    ``shard="optimizer"`` (ZeRO-1) or ``"gradients"`` (ZeRO-2) splits the optimizer state (and
    the averaged gradient) across ranks; hand the optimizer over, built on ``module``'s
    parameters and not yet stepped, as ``optimizer=``. Its update must be elementwise (SGD,
    Adam, AdamW, ...). It is re-pointed in place at this rank's shard, so the loop still calls
    ``opt.step()`` and ``opt.zero_grad()`` (and LR schedulers work); each step gathers the
    updated parameters, and the next forward waits for them bucket by bucket. With sharding the
    module's parameters hold no ``.grad``: clip with ``model.clip_grad_norm_(max_norm)``, and
    checkpoint the optimizer with ``model.optimizer_state_dict()`` (unsharded, on rank 0) and
    ``model.load_optimizer_state_dict(state)``, which work in every mode.
    """

    def __init__(self, module: nn.Module, *, bucket_mb: float = 25.0, first_bucket_mb: float = 1.0,
                 comm_dtype: str = "fp32", pack: str = "auto", shard: str = "none",
                 optimizer: torch.optim.Optimizer | None = None):
        super().__init__()
        ctx = init()
        wrong = sorted({str(p.device) for p in module.parameters() if p.device != ctx.device})
        if wrong:
            raise ValueError(f"the module's parameters are on {', '.join(wrong)}, this rank's device is "
                             f"{ctx.device}; fix: module.to(ddtrain.init().device) before wrapping it")
        if shard not in SHARD_MODES:
            raise ValueError(f"shard={shard!r}: choose one of {', '.join(SHARD_MODES)}")
        if shard != "none" and optimizer is None:
            raise ValueError(f"shard={shard!r} splits the optimizer's state across ranks, so DataParallel "
                             "needs it; fix: DataParallel(module, shard=..., "
                             "optimizer=torch.optim.AdamW(module.parameters()))")
        self.module = module
        self.world_size = ctx.world_size
        comm = CommConfig(bucket_mb=bucket_mb, first_bucket_mb=first_bucket_mb, dtype=comm_dtype, pack=pack,
                          shard=shard)
        self._engine = build_engine(module, ctx, comm)
        self._reducer: GradReducer | None = getattr(self._engine, "reducer", None)
        self.optimizer = self._engine.wrap_optimizer(optimizer) if optimizer is not None else None
        self._queued = False
        if self._reducer is not None:
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

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale the averaged gradient (every rank's shards together) to a 2-norm of at most
        ``max_norm``; returns the norm before clipping. Call it after backward."""
        holders = [t for _, t in self._engine.grad_holders()]
        norm = self._engine.grad_norm([t.grad for t in holders])
        nn.utils.clip_grads_with_norm_(holders, max_norm, norm)
        return norm

    def optimizer_state_dict(self) -> dict | None:
        """The optimizer's state in the unsharded format (what ``opt.state_dict()`` gives without
        sharding). With sharding a collective: every rank calls it, rank 0 gets it, others None."""
        if self.optimizer is None:
            raise ValueError("no optimizer was handed to DataParallel(optimizer=...); use opt.state_dict()")
        return self._engine.optimizer_state_dict(self.optimizer)

    def load_optimizer_state_dict(self, state: dict) -> None:
        """Load an unsharded optimizer state (any world size and shard mode wrote it)."""
        if self.optimizer is None:
            raise ValueError("no optimizer was handed to DataParallel(optimizer=...); "
                             "use opt.load_state_dict()")
        self._engine.load_optimizer_state_dict(self.optimizer, state)

    def state_dict(self, *args, **kwargs):
        self._engine.gathered()  # sharded: the last step's parameters may still be on their way
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)
