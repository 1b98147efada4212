"""Run a function on N local ranks over Gloo on loopback, the way torchrun would start them.

Ranks are not forked from the test process: a fork of a process whose OpenMP pool is already
running can hang the child on its first parallel op. They fork from a forkserver instead, which
has imported torch and ddtrain but never run an op, so no pool exists there and a rank starts
without paying the imports again. Each rank gets torchrun's variables, so the code under test
goes through the real ``detect_launch_env`` -> ``init_distributed`` path.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any

from tests.cli_helpers import FORKSERVER_PRELOAD

RANK_TIMEOUT_S = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn: Callable, args: tuple, results) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )
    import torch

    from ddtrain.dist.env import detect_launch_env
    from ddtrain.dist.group import init_distributed, shutdown

    torch.set_num_threads(1)  # ranks share the machine's cores
    ctx = init_distributed(detect_launch_env(os.environ), backend="gloo", device="cpu", timeout_s=60)
    try:
        results.put((rank, True, fn(ctx, *args)))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
        raise
    finally:
        shutdown(ctx)


def run_ranks(world: int, fn: Callable, *args: Any) -> list[Any]:
    """``fn(ctx, *args)`` on every rank; returns the per-rank results in rank order.

    ``fn`` must be importable (module level) and return picklable values (numpy, not tensors).
    A failing rank's traceback is re-raised here; a hung job fails after RANK_TIMEOUT_S.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world, port, fn, args, results)) for r in range(world)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    try:
        for _ in range(world):
            rank, ok, value = results.get(timeout=RANK_TIMEOUT_S)
            if not ok:
                raise AssertionError(f"rank {rank} failed:\n{value}")
            out[rank] = value
    except queue.Empty:
        raise AssertionError(f"ranks did not finish within {RANK_TIMEOUT_S} s (hang?)") from None
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world)]
