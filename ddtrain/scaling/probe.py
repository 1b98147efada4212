"""The node-sharing probe's worker: how much k workers on a node slow each other's compute and
optimizer step, measured in pairs a step apart.

Started k times at once through the study's launcher (``python -m ddtrain.scaling.probe CONFIG
BATCH OUT_DIR STEPS``), each worker trains its own copy of the workload; a Gloo group, joined
through the trainer's rendezvous, serves only to meet.
Every step it runs twice:

* **together**: all k meet, then run forward and backward at once, meet again, and step their
  optimizers at once, as a synchronous job's ranks do around each step's all-reduces;
* **alone**: each in turn runs a step while the others wait asleep.

The two are timed a few hundred milliseconds apart in the same process, with the same memory,
so a slow spell of the machine cancels in their ratio. The waiters block in Gloo's barrier,
asleep, not spinning as an MPI barrier does by default: a spinning neighbour would take the core
or the memory bandwidth that "alone" is meant to leave free.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ddtrain.config import TrainConfig
from ddtrain.data.feed import to_device
from ddtrain.scaling.profile import Worker, build_worker
from ddtrain.trainer import autocast


def timed_step(w: Worker, cfg: TrainConfig, before_update: Callable[[], None] | None = None,
               ) -> tuple[float, float]:
    """(forward + backward, optimizer step) seconds of one training step on the CPU; the bucket
    fill runs between them, untimed, as a worker with peers does it."""
    x, y = to_device(next(w.batches), torch.device("cpu"))
    t0 = time.perf_counter()
    with autocast(torch.device("cpu"), cfg.trainer.precision):
        loss = w.loss_fn(w.model(x), y)
    loss.backward()
    t1 = time.perf_counter()
    w.fill()
    if before_update is not None:
        before_update()
    t2 = time.perf_counter()
    w.optimizer.step()
    w.optimizer.zero_grad(set_to_none=True)
    return t1 - t0, time.perf_counter() - t2


def sharing_pairs(cfg: TrainConfig, batch: int, rank: int, k: int, meet: Callable[[], None], *,
                  steps: int, warmup: int = 3) -> dict[str, list[tuple[float, float]]]:
    """This worker's (compute, optimizer) seconds per timed step, together with the other k - 1
    and alone; ``meet()`` returns once all k have called it."""
    w = build_worker(cfg, batch, torch.device("cpu"), 2 * (warmup + steps))
    together, alone = [], []
    try:
        for step in range(warmup + steps):
            meet()
            both = timed_step(w, cfg, before_update=meet)
            for turn in range(k):
                meet()
                if turn == rank:
                    mine = timed_step(w, cfg)
            if step >= warmup:
                together.append(both)
                alone.append(mine)
        meet()
    finally:
        w.batches.close()
    return {"together": together, "alone": alone}


def main(argv: list[str] | None = None) -> None:
    import json
    import os
    import sys
    from pathlib import Path

    from ddtrain.config import from_mapping
    from ddtrain.dist.env import detect_launch_env
    from ddtrain.dist.group import barrier, init_distributed, shutdown

    config_path, batch, out_dir, steps = (argv or sys.argv[1:])[:4]
    cfg = from_mapping(json.loads(Path(config_path).read_text()))
    env = detect_launch_env(os.environ)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    ctx = init_distributed(env, backend="gloo", device="cpu", timeout_s=cfg.comm.timeout_s)
    try:
        pairs = sharing_pairs(cfg, int(batch), env.rank, env.world_size, lambda: barrier(ctx),
                              steps=int(steps))
    finally:
        shutdown(ctx)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"{env.rank}.json").write_text(json.dumps(pairs))


if __name__ == "__main__":
    main()
