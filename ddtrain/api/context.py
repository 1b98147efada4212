"""The process's one distributed context: made by the first ``init()``, ended by ``shutdown()``."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from ddtrain.dist.env import detect_launch_env
from ddtrain.dist.group import DistContext, init_distributed, pick_device
from ddtrain.dist.group import shutdown as _shutdown_group

_CONTEXT: DistContext | None = None


def init(*, backend: str = "auto", device: str = "auto", timeout_s: float = 300.0) -> DistContext:
    """Join the job this process was launched into and return its context.

    The launcher is read from the environment (mpirun, srun, torchrun, or none: one process).
    ``backend``: auto (NCCL on GPUs, Gloo on CPUs) | nccl | gloo. ``device``: auto (the GPU of
    this rank's local rank, else the CPU) | cuda | cpu. ``timeout_s``: how long a collective may
    wait. The context has ``.rank``, ``.local_rank``, ``.world_size``, ``.device`` and
    ``.is_main``. A second call returns the same context, whatever it is given.

    A process group that the program started itself (``torch.distributed.init_process_group``)
    is joined as it is: its rank and size are the job's.
    """
    global _CONTEXT
    if _CONTEXT is None:
        env = detect_launch_env(os.environ)
        if dist.is_initialized():
            rank = dist.get_rank()
            # A program that started its own ranks (mp.spawn) sets no launcher variables: on one
            # node, the global rank is then the local one.
            local = env.local_rank if env.launcher != "single" else rank
            env = dataclasses.replace(env, rank=rank, world_size=dist.get_world_size(), local_rank=local)
            dev = pick_device(env, device)
            if dev.type == "cuda":
                torch.cuda.set_device(dev)  # Triton launches, events and pinning use the current device
            _CONTEXT = DistContext(env, dev, dist.get_backend())
        else:
            _CONTEXT = init_distributed(env, backend=backend, device=device, timeout_s=timeout_s)
    return _CONTEXT


def current() -> DistContext | None:
    """The context of the last ``init()``, or None before it and after ``shutdown()``."""
    return _CONTEXT


def shutdown() -> None:
    """End the job cleanly: wait for every rank, then destroy the process group. Drop your
    ``DataParallel`` models first (``del model``): their gradient hooks hold the group."""
    global _CONTEXT
    if _CONTEXT is not None:
        _shutdown_group(_CONTEXT)
        _CONTEXT = None
