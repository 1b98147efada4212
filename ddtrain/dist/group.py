"""The one owner of the torch.distributed process group.

``init_distributed`` creates it (or nothing, for a single process), ``shutdown`` destroys it,
and the reductions below are no-ops on one process, so the training loop never branches on
"am I distributed?".
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

# torch.distributed.nn's functions take ``group=group.WORLD`` as a default argument, bound at
# import. DDP imports the module; imported after the group exists, it would pin the group for the
# life of the process, so that shutdown() could never free it and join Gloo's threads.
import torch.distributed.nn  # noqa: F401

from ddtrain.dist.env import LaunchEnv
from ddtrain.dist.rendezvous import loopback_interface, rendezvous


@dataclass(frozen=True)
class DistContext:
    env: LaunchEnv
    device: torch.device
    backend: str | None  # None: one process, no process group
    # The rendezvous TCPStore (None on one process): ranks publish small job-wide values there
    # (the fault monitor's address), which is cheaper than a collective and needs no device.
    store: Any = None

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def local_rank(self) -> int:
        return self.env.local_rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        return self.env.is_main


def pick_device(env: LaunchEnv, preference: str) -> torch.device:
    if preference == "cpu" or (preference == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu")
    # One GPU per local rank; modulo so that an oversubscribed Gloo debugging run still starts
    # (NCCL refuses two ranks on one GPU: init_distributed says so first).
    return torch.device("cuda", env.local_rank % torch.cuda.device_count())


def pick_backend(device: torch.device, requested: str) -> str:
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise RuntimeError("comm.backend=nccl needs CUDA devices; use comm.backend=gloo on CPU")
    return requested


def init_distributed(env: LaunchEnv, *, backend: str, device: str, timeout_s: float) -> DistContext:
    dev = pick_device(env, device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if env.world_size == 1:
        return DistContext(env, dev, None)

    backend = pick_backend(dev, backend)
    if backend == "nccl" and env.local_world_size > torch.cuda.device_count():
        raise RuntimeError(
            f"{env.local_world_size} ranks on this node but {torch.cuda.device_count()} visible GPU(s): NCCL "
            "refuses two ranks on one GPU; start one rank per GPU (CUDA_VISIBLE_DEVICES decides what is "
            "visible), or use comm.backend=gloo to debug with more ranks than GPUs")
    if backend == "gloo" and env.single_host:
        # Hostname-based interface choice is flaky (containers, VPNs); all ranks are here.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback_interface())
    store = rendezvous(env, timeout_s)
    dist.init_process_group(
        backend=backend,
        store=store,
        rank=env.rank,
        world_size=env.world_size,
        timeout=_dt.timedelta(seconds=timeout_s),
        device_id=dev if dev.type == "cuda" else None,
    )
    return DistContext(env, dev, backend, store)


def shutdown(ctx: DistContext) -> None:
    """Tear the group down while the interpreter is fully alive, joining Gloo's worker threads.

    A Gloo worker frees each finished collective a moment after the caller's wait returns. When
    that collective holds a Python-owned tensor and the interpreter is already finalising, the
    worker cannot take the GIL and the process aborts ("terminate called without an active
    exception"). Joining the workers here closes that window; they are joined when the group's
    last reference goes, so the order matters:

    1. The gc pass frees what sits in reference cycles (the engine's and DDP's gradient hooks) while
       the group is still registered, so that no C++ owner, freeing it with the GIL held, joins
       workers that may be waiting for the GIL.
    2. The barrier means no collective is in flight.
    3. Destroying the group drops its last references from Python, whose binding releases the GIL
       before the join. A model the caller still holds keeps the group alive past this point:
       ``del model`` first.
    """
    if ctx.backend is None or not dist.is_initialized():
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


# --------------------------------------------------------------------------- reductions
def all_mean(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (returns a new tensor; the input is untouched)."""
    if ctx.backend is None:
        return t.clone()
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / ctx.world_size


def _reduce_each(ctx: DistContext, values: list[float], op) -> list[float]:
    if ctx.backend is None or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_coll_device(ctx))
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_max_each(ctx: DistContext, values: list[float]) -> list[float]:
    """Elementwise max over ranks of a list of host floats, in one collective."""
    return _reduce_each(ctx, values, dist.ReduceOp.MAX)


def all_sum_each(ctx: DistContext, values: list[float]) -> list[float]:
    """Elementwise sum over ranks of a list of host floats, in one collective (float64)."""
    return _reduce_each(ctx, values, dist.ReduceOp.SUM)


def barrier(ctx: DistContext) -> None:
    if ctx.backend is not None:
        dist.barrier()


def _coll_device(ctx: DistContext) -> torch.device:
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


def all_gather_rows(ctx: DistContext, row: torch.Tensor) -> torch.Tensor:
    """Stack every rank's equally shaped ``row`` into ``[world_size, *row.shape]`` (on the CPU).

    For small host-side summaries (digests, per-parameter checksums, RNG states), not hot-path
    data: it travels through the collective device and comes back to the host.
    """
    if ctx.backend is None:
        return row.detach().cpu().unsqueeze(0).clone()
    dev = _coll_device(ctx)
    local = row.detach().to(dev).contiguous()
    rows = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(rows, local)
    return torch.stack(rows).cpu()


def broadcast_bytes(ctx: DistContext, data: bytes | None) -> bytes:
    """Rank 0's ``data`` on every rank (others pass None): a file read once, by one rank, so
    nodes need no shared file system. Two collectives: the length, then the bytes."""
    if ctx.backend is None:
        assert data is not None
        return data
    dev = _coll_device(ctx)
    size = torch.tensor([len(data) if ctx.is_main else 0], dtype=torch.int64, device=dev)
    dist.broadcast(size, src=0)
    if int(size.item()) == 0:
        return b""
    if ctx.is_main:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev)
    else:
        buf = torch.empty(int(size.item()), dtype=torch.uint8, device=dev)
    dist.broadcast(buf, src=0)
    return data if ctx.is_main else buf.cpu().numpy().tobytes()
