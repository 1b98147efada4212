"""The gradient-synchronisation engines the trainer can run, behind one small interface.

- ``local``: one process, nothing to synchronise;
- ``ddtrain``: ddtrain's own overlapped bucketed reducer (``comm/reducer.py``);
- ``torch_ddp``: torch's DistributedDataParallel with the same bucket size, the in-tree baseline
  every benchmark compares against.

The trainer calls ``engine.module(x)``, ``engine.no_sync()`` and ``engine.wait()`` in a step,
and goes through the engine for what sharding changes: the tensors that hold gradients
(``grad_holders``), their norm across ranks, the optimizer's checkpointable state, and the wait
for parameters still being gathered (``gathered``).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager

import torch
import torch.distributed as dist
from torch import nn

from ddtrain.comm.reducer import COMM_DTYPES, GradReducer
from ddtrain.comm.sharded import ShardedReducer
from ddtrain.config import CommConfig
from ddtrain.dist.group import DistContext


class Engine:
    """What an engine does with gradients, the optimizer and parameters when every rank holds
    all of them (no sharding): the defaults the sharded engine overrides."""

    module: nn.Module
    shard = "none"

    def wrap_optimizer(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return opt

    def grad_holders(self) -> list[tuple[str, torch.Tensor]]:
        """(name, tensor) for every tensor whose ``.grad`` the optimizer steps on this rank."""
        return [(n, p) for n, p in self.module.named_parameters() if p.grad is not None]

    def grad_norm(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """The 2-norm of the whole averaged gradient."""
        return nn.utils.get_total_norm(grads)

    def gathered(self) -> None:
        pass

    def state_tensors(self) -> dict:
        """The tensors of training state this rank holds, by kind (``metrics/memory.py``)."""
        params = list(self.module.parameters())
        return {"params": params, "grads": [p.grad for p in params if p.grad is not None]}

    def optimizer_state_dict(self, opt: torch.optim.Optimizer) -> dict | None:
        return opt.state_dict()

    def load_optimizer_state_dict(self, opt: torch.optim.Optimizer, state: dict) -> None:
        opt.load_state_dict(state)


class LocalEngine(Engine):
    name = "local"
    measures_exposed_comm = True  # trivially: there is none

    def __init__(self, module: nn.Module):
        self.module = module

    def no_sync(self) -> ContextManager:
        return contextlib.nullcontext()

    def wait(self) -> None:
        pass

    def describe(self) -> str:
        return "single process: no gradient communication"


class DdtrainEngine(Engine):
    name = "ddtrain"
    measures_exposed_comm = True

    def __init__(self, module: nn.Module, ctx: DistContext, comm: CommConfig, on_event=None):
        self.module = module
        self.reducer = GradReducer(
            module,
            world_size=ctx.world_size,
            bucket_mb=comm.bucket_mb,
            first_bucket_mb=comm.first_bucket_mb,
            comm_dtype=comm.dtype,
            pack=comm.pack,
            on_event=on_event,
        )

    def no_sync(self) -> ContextManager:
        return self.reducer.no_sync()

    def wait(self) -> None:
        self.reducer.wait()

    def state_tensors(self) -> dict:
        return {**super().state_tensors(), "comm": self.reducer.buffers}

    def describe(self) -> str:
        return "ddtrain reducer: " + self.reducer.describe()


class ShardedEngine(DdtrainEngine):
    """ddtrain's reducer with the optimizer state (and gradients) split across ranks."""

    def __init__(self, module: nn.Module, ctx: DistContext, comm: CommConfig, on_event=None,
                 overlap_gather: bool = True):
        self.module = module
        self.shard = comm.shard
        self.reducer = ShardedReducer(module, shard=comm.shard, world_size=ctx.world_size,
                                      bucket_mb=comm.bucket_mb, first_bucket_mb=comm.first_bucket_mb,
                                      comm_dtype=comm.dtype, overlap_gather=overlap_gather, on_event=on_event)

    def wrap_optimizer(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return self.reducer.shard_optimizer(opt)

    def grad_holders(self) -> list[tuple[str, torch.Tensor]]:
        r = self.reducer
        return [(n, t) for n, t in zip(r.piece_names, r.piece_tensors) if t.grad is not None]

    def grad_norm(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Each rank holds a shard: the squares are summed over ranks in one small all-reduce."""
        device = self.reducer.flat_params[0].device
        local = nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=device)
        squares = local.to(device=device, dtype=torch.float32).pow(2).reshape(1)
        dist.all_reduce(squares, group=self.reducer.group)
        return squares.sqrt()[0]

    def gathered(self) -> None:
        self.reducer.gathered()

    def state_tensors(self) -> dict:
        r = self.reducer
        left = [p.grad for p in r.params if p.grad is not None]  # held back for a busy bucket buffer
        outputs = [t for t in r._rs_out if not any(t is g for g in r.grad_shards)]  # a cast's source
        comm = [*r.buffers, *outputs, *r.inboxes]
        return {"params": r.flat_params, "comm": comm, "grads": [*r.grad_shards, *left]}

    def optimizer_state_dict(self, opt: torch.optim.Optimizer) -> dict | None:
        return self.reducer.optimizer_state_dict(opt)

    def load_optimizer_state_dict(self, opt: torch.optim.Optimizer, state: dict) -> None:
        self.reducer.load_optimizer_state_dict(opt, state)


class TorchDDPEngine(Engine):
    name = "torch_ddp"
    # DDP waits for its all-reduces inside backward (autograd's final callback), so the time
    # backward spends blocked on communication cannot be told apart from compute.
    measures_exposed_comm = False

    def __init__(self, module: nn.Module, ctx: DistContext, comm: CommConfig):
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        self.module = DistributedDataParallel(
            module, device_ids=device_ids, bucket_cap_mb=comm.bucket_mb
        )
        if comm.dtype != "fp32":
            self.module.register_comm_hook(state=None, hook=_cast_hook(COMM_DTYPES[comm.dtype]))
        self._comm = comm

    def no_sync(self) -> ContextManager:
        return self.module.no_sync()

    def wait(self) -> None:
        pass

    def state_tensors(self) -> dict:
        held = super().state_tensors()
        return {**held, "hidden_comm_bytes": sum(p.numel() * p.element_size() for p in held["params"]
                                                 if p.requires_grad)}

    def describe(self) -> str:
        return f"torch DDP baseline: bucket_cap_mb={self._comm.bucket_mb}, comm dtype {self._comm.dtype}"


def _cast_hook(dtype: torch.dtype):
    """DDP comm hook: divide, cast the bucket to ``dtype``, all-reduce, cast back.

    torch ships bf16/fp16 compress hooks, but they refuse any backend other than NCCL; this one
    does the same arithmetic as ddtrain's reducer on Gloo too, so the baseline stays comparable.
    """

    def hook(state, bucket):
        buf = bucket.buffer()
        packed = buf.div(dist.get_world_size()).to(dtype)
        fut = dist.all_reduce(packed, async_op=True).get_future()

        def unpack(f):
            buf.copy_(f.value()[0])
            return buf

        return fut.then(unpack)

    return hook


def build_engine(module: nn.Module, ctx: DistContext, comm: CommConfig, on_event=None,
                 overlap_gather: bool = True):
    """``overlap_gather``: with sharding, let the next forward wait for the parameters' gather
    bucket by bucket (False: gather right after the update)."""
    if ctx.world_size == 1:
        return LocalEngine(module)
    if comm.engine == "torch_ddp":
        return TorchDDPEngine(module, ctx, comm)
    if comm.shard != "none":
        return ShardedEngine(module, ctx, comm, on_event=on_event, overlap_gather=overlap_gather)
    return DdtrainEngine(module, ctx, comm, on_event=on_event)
