"""Measure the performance model's inputs on one worker, in this process, with no process group.

``profile_worker`` trains a few steps of ``cfg`` the way the trainer does and records, per
step: forward, backward and optimizer time, and when each gradient bucket's last gradient
appeared during backward (a post-accumulate-grad hook per parameter, the same signal the
reducer launches its all-reduces on). The buckets are planned exactly as the reducer would plan
them for ``cfg.comm``.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from ddtrain.comm.buckets import BucketPlan, MiB, plan_buckets, slot_views
from ddtrain.comm.packing import TritonBuckets, choose_packing
from ddtrain.comm.reducer import COMM_DTYPES
from ddtrain.config import TrainConfig
from ddtrain.data.feed import loader_workers, to_device, train_loader
from ddtrain.launcher.cores import usable_cpus
from ddtrain.loss import build_loss
from ddtrain.optim import build_optimizer
from ddtrain.perf.flops import flops_per_sample
from ddtrain.scaling.model import Bucket, Profile
from ddtrain.scaling.spread import robust_cv
from ddtrain.trainer import autocast, build_datasets, make_model


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # deliberate: the profile times phases, not launches
    return time.perf_counter()


def profile_worker(cfg: TrainConfig, batch: int, device: torch.device, *, steps: int = 12,
                   warmup: int = 3, meet=None) -> Profile:
    """One worker's profile at ``batch``. ``meet()``, if given, runs before every step and
    before every optimizer step (outside the timed phases): concurrent profiles meet there, as
    the ranks of a synchronous job do at each step's all-reduce, so their computes overlap and
    so do their optimizer steps, which contend for memory bandwidth more than compute does."""
    dataset, _ = build_datasets(cfg)
    model = make_model(cfg, getattr(dataset, "spec", None)).to(device)
    optimizer, _ = build_optimizer(cfg.optim, model, warmup + steps)
    loss_fn = build_loss(cfg.loss)
    loader = train_loader(dataclasses.replace(cfg.data, batch_size=batch), dataset, rank=0, world_size=1,
                          seed=cfg.seed, workers=loader_workers(cfg.data, dataset, usable_cpus(), 1),
                          pin_memory=device.type == "cuda")
    flops, _source = flops_per_sample(model, lambda: to_device(loader.batch_at(0), device), batch, loss_fn)
    batches = loader.stream()
    params = [p for p in model.parameters() if p.requires_grad]
    elsize = COMM_DTYPES[cfg.comm.dtype].itemsize  # as the reducer plans its buckets
    plan = plan_buckets([p.numel() for p in params], elsize, cfg.comm.bucket_mb * MiB,
                        cfg.comm.first_bucket_mb * MiB)
    dtype = COMM_DTYPES[cfg.comm.dtype]
    buffers = [torch.empty(n, dtype=dtype, device=device) for n in plan.sizes]
    fill = bucket_fill(cfg.comm.pack, params, plan, buffers)

    seen: dict[int, float] = {}

    def hook_for(i: int):
        def hook(_p):
            seen[i] = time.perf_counter()  # CPU: exact; CUDA: when the host queued it (see below)
        return hook

    handles = [p.register_post_accumulate_grad_hook(hook_for(i)) for i, p in enumerate(params)]
    fwd, bwd, opt, data, total, ready, fills = [], [], [], [], [], [], []
    try:
        for step in range(warmup + steps):
            seen.clear()
            if meet is not None:
                meet()
            t0 = _now(device)
            x, y = to_device(next(batches), device)
            t1 = _now(device)
            with autocast(device, cfg.trainer.precision):
                loss = loss_fn(model(x), y)
            t2 = _now(device)
            loss.backward()
            t3 = _now(device)
            fill()
            tf = _now(device)
            if meet is not None:
                meet()
            to = _now(device) if meet is not None else tf  # a meeting's wait is in no phase
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t4 = _now(device)
            if step < warmup:
                continue
            data.append(t1 - t0)
            fwd.append(t2 - t1)
            bwd.append(t3 - t2)
            fills.append(tf - t3)
            opt.append(t4 - to)
            total.append(t4 - t0 - (to - t3))  # one worker's own step: it fills and waits for nothing
            ready.append(ready_fractions(seen, plan.members, t2, t3))
    finally:
        batches.close()
        for h in handles:
            h.remove()

    med = statistics.median
    buckets = tuple(
        Bucket(size * elsize, med(r[b] for r in ready)) for b, size in enumerate(plan.sizes)
    )
    cv = robust_cv(total)  # the estimator measured runs use, so both kinds of jitter compare
    return Profile(
        batch=batch, forward_s=med(fwd), backward_s=med(bwd), optimizer_s=med(opt), data_s=med(data),
        buckets=buckets, flops_per_sample=float(flops), cv=cv, fill_s=med(fills),
    )


def bucket_fill(pack: str, params: list[torch.Tensor], plan: BucketPlan,
                buffers: list[torch.Tensor]) -> Callable[[], None]:
    """Filling every bucket (``buffers``) from the gradients the way the reducer will
    (comm.pack): one Triton launch per bucket where ``choose_packing`` picks it (auto on a GPU),
    else a copy per tensor."""
    how, _why = choose_packing(pack, buffers[0].device, {p.dtype for p in params})
    if how == "triton":
        packer = TritonBuckets(plan, buffers, params)

        def fill_triton() -> None:
            for b in range(len(plan.sizes)):
                packer.pack(b, 0.5)

        return fill_triton
    views = slot_views(buffers, plan)
    return lambda: fill_buckets(params, views)


def fill_buckets(params: list[torch.Tensor], views: list[torch.Tensor]) -> None:
    """What the reducer does to each gradient when a worker has peers: copy it into its bucket
    slot, scaled (by 1/N; the factor does not change the cost) and cast to the comm dtype."""
    for p, view in zip(params, views):
        if p.grad is not None:
            torch.mul(p.grad.reshape(-1), 0.5, out=view)


def ready_fractions(seen: dict[int, float], members, backward_start: float,
                    backward_end: float) -> list[float]:
    """When each bucket became ready, as a fraction of backward: a bucket is ready when its last
    gradient is. On CUDA the hook fires when the host reaches it, which runs ahead of the GPU,
    so these fractions are early: the model then hides a little more communication than the
    GPU would."""
    span = max(backward_end - backward_start, 1e-12)
    return [min(1.0, max(0.0, (max(seen.get(i, backward_end) for i in m) - backward_start) / span))
            for m in members]


def main(argv: list[str] | None = None) -> None:
    """``python -m ddtrain.scaling.profile CONFIG.json BATCH OUT_DIR STEPS``: profile one worker
    over STEPS timed steps and write ``OUT_DIR/<rank>.json``. Started k times at once (``mpirun
    -np k``, by ``measure.measure_node_slowdown``), with no process group, it measures how much k
    workers sharing this node slow each other's compute."""
    import json
    import os
    import sys
    from dataclasses import asdict
    from pathlib import Path

    from ddtrain.config import from_mapping
    from ddtrain.dist.env import detect_launch_env

    config_path, batch, out_dir, steps = (argv or sys.argv[1:])[:4]
    cfg = from_mapping(json.loads(Path(config_path).read_text()))
    env = detect_launch_env(os.environ)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    meet = None
    if env.is_mpi and env.world_size > 1:
        # The k workers start at different moments (imports, remote nodes' daemons) and drift
        # apart: without meeting at every step their phases would overlap only in part, and
        # sharing look cheaper than in a synchronous job.
        from mpi4py import MPI

        meet = MPI.COMM_WORLD.Barrier
    p = profile_worker(cfg, int(batch), torch.device("cpu"), steps=int(steps), warmup=3, meet=meet)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"{env.rank}.json").write_text(json.dumps(asdict(p)))


if __name__ == "__main__":
    main()
