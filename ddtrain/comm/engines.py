"""The gradient-synchronisation engines the trainer can run, behind one small interface.

- ``local``: one process, nothing to synchronise;
- ``ddtrain``: ddtrain's own overlapped bucketed reducer (``comm/reducer.py``);
- ``torch_ddp``: torch's DistributedDataParallel with the same bucket size, the in-tree baseline
  every benchmark compares against.

The trainer only calls ``engine.module(x)``, ``engine.no_sync()`` and ``engine.wait()``.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager as ContextManager

import torch
import torch.distributed as dist
from torch import nn

from ddtrain.comm.reducer import COMM_DTYPES, GradReducer
from ddtrain.config import CommConfig
from ddtrain.dist.group import DistContext


class LocalEngine:
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


class DdtrainEngine:
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

    def describe(self) -> str:
        return "ddtrain reducer: " + self.reducer.describe()


class TorchDDPEngine:
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


def build_engine(module: nn.Module, ctx: DistContext, comm: CommConfig, on_event=None):
    if ctx.world_size == 1:
        return LocalEngine(module)
    if comm.engine == "torch_ddp":
        return TorchDDPEngine(module, ctx, comm)
    return DdtrainEngine(module, ctx, comm, on_event=on_event)
