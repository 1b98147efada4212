"""One training job on this rank: detect the launch, check inputs, start the group, train, close."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch

from ddtrain.config import TrainConfig
from ddtrain.data import build_dataset
from ddtrain.dist.env import LaunchEnv, detect_launch_env
from ddtrain.dist.group import init_distributed, shutdown
from ddtrain.errors import fail
from ddtrain.models import INPUT_KIND
from ddtrain.trainer import train

log = logging.getLogger("ddtrain")


def setup_logging(env: LaunchEnv, run_dir: Path | None) -> None:
    """Rank 0 logs INFO to stderr and to ``train.log``; the other ranks only warnings."""
    fmt = logging.Formatter(f"[%(asctime)s][rank {env.rank}][%(levelname)s] %(message)s", "%H:%M:%S")
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if env.is_main else logging.WARNING)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    log.addHandler(console)
    if env.is_main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(run_dir / "train.log")
        file.setFormatter(fmt)
        log.addHandler(file)


def cpu_threads(requested: int, local_world_size: int) -> int:
    """Intra-op threads per rank: ranks on one node share its cores instead of fighting over them."""
    if requested > 0:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, local_world_size))


def run(cfg: TrainConfig, run_dir: Path) -> None:
    env = detect_launch_env(os.environ)
    setup_logging(env, run_dir)
    torch.set_num_threads(cpu_threads(cfg.trainer.threads, env.local_world_size))

    # Everything that can be wrong with the inputs is found here, before any process group.
    try:
        dataset = build_dataset(cfg.data, INPUT_KIND[cfg.model.name], cfg.seed)
    except ValueError as e:
        # Files can differ between nodes, so each failing rank speaks for itself.
        fail(str(e), env.rank, same_on_all_ranks=env.world_size == 1)

    ctx = init_distributed(
        env, backend=cfg.comm.backend, device=cfg.trainer.device, timeout_s=cfg.comm.timeout_s
    )
    log.info(
        "run dir %s; %d rank(s) via %s, backend %s, device %s",
        run_dir, ctx.world_size, env.launcher, ctx.backend or "none", ctx.device,
    )
    try:
        result = train(cfg, ctx, run_dir, dataset=dataset)
        history = result.history
        del result  # the engine (and its hooks) must go before the group does: see shutdown()
    finally:
        shutdown(ctx)
    if ctx.is_main and history:
        last = history[-1]
        log.info(
            "done: step %d loss %.4f, %.1f samples/s, step %.4f s",
            last["step"], last["loss"], last["samples_per_s"], last["step_time_s"],
        )
        log.info("metrics: %s", run_dir / "metrics.jsonl")
        if cfg.tensorboard:
            log.info("TensorBoard: tensorboard --logdir %s", run_dir / "tb")
