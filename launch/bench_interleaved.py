#!/usr/bin/env python3
"""ddtrain's reducer and torch DDP in ONE job, step by step: the least noisy comparison.

Every rank holds two identical replicas of the model, one synchronised by ddtrain's reducer and
one wrapped in torch DDP with the same bucket size, and trains them on the same batches,
alternating which engine goes first at each step. Each timed step starts after a barrier and is
the max over ranks. Drift in machine load (the dominant noise on shared CPUs) then hits both
engines within milliseconds of each other, and the per-step ratio cancels it.

    mpirun -np 2 python launch/bench_interleaved.py --steps 60 model=gpt
    mpirun -np 8 python launch/bench_interleaved.py model=resnet model.depth=50 data.batch_size=64
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time

import torch

ENGINES = ("ddtrain", "torch_ddp")


def load_config(overrides: list[str]):
    from ddtrain.cli import compose_config
    from ddtrain.config import from_mapping

    return from_mapping(compose_config(overrides))


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for ddtrain")
    args = ap.parse_args()
    if args.steps <= args.warmup:
        sys.exit(f"bench_interleaved: --steps {args.steps} must exceed --warmup {args.warmup} "
                 "(the warm-up steps are not timed)")
    return args


def setup(cfg):
    """The process group and two replicas of the model, one per engine, on the same batches."""
    from ddtrain.dist.env import detect_launch_env
    from ddtrain.dist.group import init_distributed
    from ddtrain.run import cpu_threads
    from ddtrain.trainer import build_datasets, build_replica

    env = detect_launch_env(os.environ)
    torch.set_num_threads(cpu_threads(cfg.trainer.threads, env.local_world_size))
    ctx = init_distributed(env, backend=cfg.comm.backend, device=cfg.trainer.device,
                           timeout_s=cfg.comm.timeout_s)
    if ctx.world_size < 2:
        sys.exit("bench_interleaved: run it under mpirun -np N with N >= 2 (one rank has no communication)")
    dataset, _ = build_datasets(cfg)
    reps = {
        e: build_replica(dataclasses.replace(cfg, comm=dataclasses.replace(cfg.comm, engine=e)), ctx, dataset)
        for e in ENGINES
    }
    return ctx, reps


def measure(cfg, ctx, reps, steps: int):
    """Every step once per engine, the order alternating; (max-over-ranks step times, rank 0's
    phases) per engine."""
    from ddtrain.dist.group import all_max_each, barrier
    from ddtrain.perf.clock import StepClock
    from ddtrain.trainer import train_step

    clocks = {e: StepClock(ctx.device) for e in ENGINES}
    times: dict[str, list[float]] = {e: [] for e in ENGINES}
    phases: dict[str, list[dict[str, float]]] = {e: [] for e in ENGINES}
    batches = {e: reps[e].loader.stream() for e in ENGINES}  # each from step 0: the same batches

    def sync() -> None:
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()  # deliberate: a benchmark times whole steps

    for step in range(steps):
        for engine in ENGINES if step % 2 == 0 else ENGINES[::-1]:
            barrier(ctx)
            sync()
            t0 = time.perf_counter()
            train_step(reps[engine], batches[engine], step, cfg, ctx, clocks[engine])
            sync()
            times[engine].append(all_max_each(ctx, [time.perf_counter() - t0])[0])
            phases[engine] += clocks[engine].drain()
    return times, phases


def report(cfg, ctx, times, phases, warmup: int) -> None:
    timed = {e: v[warmup:] for e, v in times.items()}
    pairs = [a / b for a, b in zip(timed["ddtrain"], timed["torch_ddp"])]
    med = {e: statistics.median(v) for e, v in timed.items()}
    device = torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else (
        f"CPU {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} thread(s)/rank")
    command = f"mpirun -np {ctx.world_size} python launch/bench_interleaved.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    print(f"date: {dt.date.today().isoformat()}; device: {device}; backend: {ctx.backend}; "
          f"ranks: {ctx.world_size}; command: `{command}`")
    print(f"model={cfg.model.name} batch/rank={cfg.data.batch_size} bucket_mb={cfg.comm.bucket_mb} "
          f"comm dtype={cfg.comm.dtype}; {len(pairs)} step pairs after {warmup} warm-up steps")
    print()
    print("| model | ddtrain median step (ms) | torch_ddp median step (ms) | ratio of medians | "
          "per-step ratio median [p10, p90] |")
    print("|---|---|---|---|---|")
    print(f"| {cfg.model.name} | {med['ddtrain'] * 1e3:.2f} | {med['torch_ddp'] * 1e3:.2f} | "
          f"{med['ddtrain'] / med['torch_ddp']:.3f} | {statistics.median(pairs):.3f} "
          f"[{quantile(pairs, 0.1):.3f}, {quantile(pairs, 0.9):.3f}] |")
    print()
    # Rank 0's phases. torch_ddp waits for its all-reduces inside backward, so its "compute"
    # includes them and its exposed communication reads ~0.
    # Means, not medians: means add up to the step, and a long tail in one phase shows.
    print("| engine (rank 0, mean) | fwd+bwd (ms) | exposed comm after backward (ms) | optimizer (ms) "
          "| step (ms) |")
    print("|---|---|---|---|---|")
    for e in ENGINES:
        ph = phases[e][warmup:]
        keys = ("compute", "comm_exposed", "optimizer", "total")
        cols = [statistics.fmean(p[k] for p in ph) * 1e3 for k in keys]
        print(f"| {e} | " + " | ".join(f"{c:.2f}" for c in cols) + " |")


def main() -> None:
    from ddtrain.dist.group import shutdown

    args = parse_args()
    cfg = load_config(args.overrides + [f"trainer.steps={args.steps}"])
    ctx, reps = setup(cfg)
    times, phases = measure(cfg, ctx, reps, args.steps)
    shutdown(ctx)
    if ctx.is_main:
        report(cfg, ctx, times, phases, args.warmup)


if __name__ == "__main__":
    main()
