#!/usr/bin/env python3
"""Sharded data parallel against DDP, in ONE job, step by step: training-state bytes and step time.

Every rank holds one replica of the model per variant and trains each on the same batches, a
block of ``--block`` steps at a time, rotating which variant goes first at each turn; each
timed step starts after a barrier and is the max over ranks, so drift in machine load hits every
variant alike. Within a block the sharded variants' all-gather overlaps the next forward, as in
a run. Variants:

- ``ddtrain``, ``ddtrain-optimizer``, ``ddtrain-gradients``: ddtrain's reducer, comm.shard
  none / optimizer (ZeRO-1) / gradients (ZeRO-2);
- ``ddp``: torch DistributedDataParallel with the same bucket size;
- ``ddp-zero``: DDP with torch's ZeroRedundancyOptimizer (optimizer state sharded, gathered with
  a broadcast after the step, no overlap);
- ``fsdp2``: torch's ``fully_shard`` on every block and the root, where it runs (its reason is
  printed where it does not).

Training state per rank is counted from each variant's tensors after its first update
(``ddtrain/metrics/memory.py``). The optimizer phase is rank 0's, from the trainer's clock.

    mpirun -np 2 python launch/bench_shard.py --steps 30 model=gpt model.dim=384 model.layers=12 \\
        data=chars data.seq_len=64 data.batch_size=2 optim=adamw
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time

import torch
from torch import nn

VARIANTS = ("ddtrain", "ddtrain-optimizer", "ddtrain-gradients", "ddp", "ddp-zero", "fsdp2")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--block", type=int, default=4, help="steps per variant per turn (the order rotates)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, as for ddtrain")
    args = ap.parse_args()
    if args.steps <= args.warmup:
        sys.exit(f"bench_shard: --steps {args.steps} must exceed --warmup {args.warmup}")
    return args


class ZeroEngine:
    """torch DDP for the gradients, and ZeroRedundancyOptimizer for the state."""

    def __init__(self, ddp_engine):
        self.inner = ddp_engine
        self.module, self.name, self.measures_exposed_comm = ddp_engine.module, "ddp-zero", False

    def __getattr__(self, key):
        return getattr(self.inner, key)

    def wrap_optimizer(self, opt):
        from torch.distributed.optim import ZeroRedundancyOptimizer

        g = opt.param_groups[0]
        return ZeroRedundancyOptimizer(
            [p for p in self.module.parameters() if p.requires_grad], optimizer_class=type(opt),
            **{k: g[k] for k in ("lr", "weight_decay") if k in g},
            **({"betas": g["betas"], "fused": True} if "betas" in g
               else {"momentum": g.get("momentum", 0.0)}))

    def state_tensors(self):
        return self.inner.state_tensors()


class FSDPEngine:
    """torch's fully_shard (FSDP2) on each of the model's blocks and on the root."""

    name, measures_exposed_comm, shard = "fsdp2", False, "fsdp2"

    def __init__(self, model: nn.Module, ctx):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        for m in model.modules():
            if isinstance(m, nn.ModuleList):
                for block in m:
                    fully_shard(block, mesh=mesh)
        self.module = fully_shard(model, mesh=mesh)

    def no_sync(self):
        return contextlib.nullcontext()

    def wait(self):
        pass

    def wrap_optimizer(self, opt):
        return opt

    def grad_holders(self):
        return [(n, p) for n, p in self.module.named_parameters() if p.grad is not None]

    def grad_norm(self, grads):
        norm = nn.utils.get_total_norm(grads)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def gathered(self):
        pass

    def state_tensors(self):
        params = [p.to_local() if hasattr(p, "to_local") else p for p in self.module.parameters()]
        grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
                 for p in self.module.parameters() if p.grad is not None]
        return {"params": params, "grads": grads}


def build(cfg, ctx, dataset, variant):
    """A replica of ``cfg``'s model under ``variant``, or the reason it cannot be built."""
    from ddtrain.data.feed import train_loader
    from ddtrain.loss import build_loss
    from ddtrain.optim import build_optimizer
    from ddtrain.trainer import Replica, build_replica, make_model

    comm = {"ddtrain": dict(engine="ddtrain", shard="none"),
            "ddtrain-optimizer": dict(engine="ddtrain", shard="optimizer"),
            "ddtrain-gradients": dict(engine="ddtrain", shard="gradients"),
            "ddp": dict(engine="torch_ddp", shard="none"),
            "ddp-zero": dict(engine="torch_ddp", shard="none"),
            "fsdp2": dict(engine="torch_ddp", shard="none")}[variant]
    vcfg = dataclasses.replace(cfg, comm=dataclasses.replace(cfg.comm, **comm))
    if variant == "fsdp2":
        try:
            engine = FSDPEngine(make_model(vcfg, dataset.spec).to(ctx.device), ctx)
            opt, sched = build_optimizer(vcfg.optim, engine.module, vcfg.trainer.steps)
            loader = train_loader(vcfg.data, dataset, rank=ctx.rank, world_size=ctx.world_size,
                                  seed=vcfg.seed, workers=0, pin_memory=False)
            return Replica(engine.module, engine, opt, sched, build_loss(vcfg.loss), loader), ""
        except Exception as e:  # reported, not fatal: FSDP2's CPU support varies by torch version
            return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    rep = build_replica(vcfg, ctx, dataset)
    if variant == "ddp-zero":
        from ddtrain.optim import lr_factor

        rep.engine = ZeroEngine(rep.engine)
        rep.optimizer = rep.engine.wrap_optimizer(rep.optimizer)
        rep.scheduler = torch.optim.lr_scheduler.LambdaLR(
            rep.optimizer, lambda s: lr_factor(s, vcfg.trainer.steps, vcfg.optim))
    return rep, ""


def main() -> None:
    from ddtrain.cli import compose_config
    from ddtrain.config import from_mapping
    from ddtrain.dist.env import detect_launch_env
    from ddtrain.dist.group import all_max_each, barrier, init_distributed, shutdown
    from ddtrain.metrics.memory import CATEGORIES
    from ddtrain.perf.clock import StepClock
    from ddtrain.run import cpu_threads
    from ddtrain.trainer import build_datasets, train_step

    args = parse_args()
    cfg = from_mapping(compose_config(args.overrides + [f"trainer.steps={args.steps}"]))
    env = detect_launch_env(os.environ)
    torch.set_num_threads(cpu_threads(cfg.trainer.threads, env.local_world_size))
    ctx = init_distributed(env, backend=cfg.comm.backend, device=cfg.trainer.device,
                           timeout_s=cfg.comm.timeout_s)
    if ctx.world_size < 2:
        sys.exit("bench_shard: run it under mpirun -np N with N >= 2")
    dataset, _ = build_datasets(cfg)
    reps, why_not = {}, {}
    for v in args.variants:
        rep, why = build(cfg, ctx, dataset, v)
        if rep is None:
            why_not[v] = why
        else:
            reps[v] = rep
    names = list(reps)
    clocks = {v: StepClock(ctx.device) for v in names}
    times: dict[str, list[float]] = {v: [] for v in names}
    phases: dict[str, list[dict]] = {v: [] for v in names}
    memory: dict[str, dict] = {}
    gather: dict[str, list[float]] = {v: [] for v in names}
    batches = {v: reps[v].loader.stream() for v in names}
    for turn, first in enumerate(range(0, args.steps, args.block)):
        k = turn % len(names)
        for v in names[k:] + names[:k]:
            block = range(first, min(first + args.block, args.steps))
            for step in block:
                barrier(ctx)
                t0 = time.perf_counter()
                out = train_step(reps[v], batches[v], step, cfg, ctx, clocks[v], count_memory=step == 0)
                # Inside a block the sharded variants' all-gather overlaps the next forward, as in
                # a run; after a block's last step it is waited for inside that step's time, so
                # the next variant does not pay for it.
                t1 = time.perf_counter()
                if step == block[-1]:
                    reps[v].engine.gathered()
                t2 = time.perf_counter()
                times[v].append(all_max_each(ctx, [t2 - t0])[0])
                gather[v].append(t2 - t1)
                phases[v] += clocks[v].drain()
                if out.memory is not None:
                    keys = sorted(out.memory)
                    memory[v] = dict(zip(keys, all_max_each(ctx, [float(out.memory[k]) for k in keys])))
    shutdown(ctx)
    if not ctx.is_main:
        return
    n_params = sum(p.numel() for p in reps[names[0]].model.parameters()) if "fsdp2" not in names[:1] else 0
    command = f"mpirun -np {ctx.world_size} python launch/bench_shard.py " + " ".join(
        shlex.quote(a) for a in sys.argv[1:])
    print(f"date: {dt.date.today().isoformat()}; device: CPU {platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} thread(s)/rank; backend: {ctx.backend}; ranks: {ctx.world_size}; "
          f"command: `{command}`")
    print(f"model={cfg.model.name} ({n_params / 1e6:.2f}M parameters) optim={cfg.optim.name} "
          f"batch/rank={cfg.data.batch_size} bucket_mb={cfg.comm.bucket_mb}; {args.steps - args.warmup} "
          f"steps per variant after {args.warmup} warm-up steps")
    for v, why in why_not.items():
        print(f"{v}: not measured ({why})")
    print()
    base = "ddp" if "ddp" in names else names[0]
    timed = {v: t[args.warmup:] for v, t in times.items()}
    print(f"| variant | median step (ms) | p10-p90 (ms) | per-step ratio to {base}: median [p10, p90] | "
          "optimizer, rank 0 mean (ms) | optimizer / step | gather wait after a block, rank 0 mean "
          "(ms) |")
    print("|---|---|---|---|---|---|---|")
    for v in names:
        ratios = sorted(a / b for a, b in zip(timed[v], timed[base]))
        opt = statistics.fmean(p["optimizer"] for p in phases[v][args.warmup:])
        tot = statistics.fmean(p["total"] for p in phases[v][args.warmup:])
        q = sorted(timed[v])
        spread = f"{q[len(q) // 10] * 1e3:.1f}-{q[9 * len(q) // 10] * 1e3:.1f}"
        print(f"| {v} | {statistics.median(q) * 1e3:.1f} | {spread} | {statistics.median(ratios):.3f} "
              f"[{ratios[len(ratios) // 10]:.3f}, "
              f"{ratios[9 * len(ratios) // 10]:.3f}] | {opt * 1e3:.1f} | {opt / tot:.2f} | "
              f"{statistics.fmean(gather[v][args.block - 1::args.block]) * 1e3:.1f} |")
    print()
    print(f"| variant | {' | '.join(c.replace('_bytes', '') for c in CATEGORIES)} | state per rank (MiB) | "
          f"/ {base} |")
    print("|---|" + "---|" * (len(CATEGORIES) + 2))
    for v in names:
        m = memory.get(v)
        if not m:
            continue
        cols = " | ".join(f"{m[c] / 2**20:.1f}" for c in CATEGORIES)
        print(f"| {v} | {cols} | {m['state_bytes_per_worker'] / 2**20:.1f} | "
              f"{m['state_bytes_per_worker'] / memory[base]['state_bytes_per_worker']:.2f} |")


if __name__ == "__main__":
    main()
