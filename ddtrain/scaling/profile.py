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


@dataclasses.dataclass
class Worker:
    """One worker's training state, built as the trainer builds it, with its buckets planned
    as the reducer would plan them for ``cfg.comm`` and a fill that copies into them."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    loader: object
    params: list[torch.Tensor]
    plan: BucketPlan
    elsize: int
    fill: Callable[[], None]
    # Each gradient's slot in its bucket where the reducer copies it in that gradient's hook (a
    # copy per tensor); None where it packs whole buckets (Triton).
    views: list[torch.Tensor] | None

    def __post_init__(self) -> None:
        self.batches = self.loader.stream()


def build_worker(cfg: TrainConfig, batch: int, device: torch.device, steps: int) -> Worker:
    dataset, _ = build_datasets(cfg)
    model = make_model(cfg, getattr(dataset, "spec", None)).to(device)
    optimizer, _ = build_optimizer(cfg.optim, model, steps)
    loader = train_loader(dataclasses.replace(cfg.data, batch_size=batch), dataset, rank=0, world_size=1,
                          seed=cfg.seed, workers=loader_workers(cfg.data, dataset, usable_cpus(), 1),
                          pin_memory=device.type == "cuda")
    params = [p for p in model.parameters() if p.requires_grad]
    dtype = COMM_DTYPES[cfg.comm.dtype]
    plan = plan_buckets([p.numel() for p in params], dtype.itemsize, cfg.comm.bucket_mb * MiB,
                        cfg.comm.first_bucket_mb * MiB)
    buffers = [torch.empty(n, dtype=dtype, device=device) for n in plan.sizes]
    per_tensor = choose_packing(cfg.comm.pack, device, {p.dtype for p in params})[0] != "triton"
    return Worker(model, optimizer, build_loss(cfg.loss), loader, params, plan, dtype.itemsize,
                  bucket_fill(cfg.comm.pack, params, plan, buffers),
                  slot_views(buffers, plan) if per_tensor else None)


def profile_worker(cfg: TrainConfig, batch: int, device: torch.device, *, steps: int = 12,
                   warmup: int = 3) -> Profile:
    """One worker's profile at ``batch``.

    Its fill (``Profile.fill_s``) is what the reducer's filling adds to backward when a worker
    has peers. With a copy per tensor the reducer copies each gradient into its bucket in that
    gradient's hook and drops it at once, so the next gradient reuses its memory; one worker
    alone keeps every gradient until ``zero_grad``, and on CPU the next backward then takes fresh
    pages. The two cost about the same, so the fill is measured as backward with the reducer's
    hooks less backward without, the two run back to back every step, in alternating order, and
    the median of the steps' differences taken (it may come out negative).
    With Triton packing, whole buckets after backward, it is that pass's time."""
    w = build_worker(cfg, batch, device, 2 * (warmup + steps))
    flops, _source = flops_per_sample(w.model, lambda: to_device(w.loader.batch_at(0), device), batch,
                                      w.loss_fn)

    seen: dict[int, float] = {}
    filling = [False]

    def hook_for(i: int):
        def hook(p):
            seen[i] = time.perf_counter()  # CPU: exact; CUDA: when the host queued it (see below)
            if filling[0]:  # the reducer's hook: into its bucket slot, then dropped
                fill_buckets([p], [w.views[i]])
                p.grad = None
        return hook

    handles = [p.register_post_accumulate_grad_hook(hook_for(i)) for i, p in enumerate(w.params)]
    fwd, bwd, opt, data, total, ready, fills, hooked = [], [], [], [], [], [], [], []
    kinds = (False, True) if w.views is not None else (False,)
    try:
        for step in range(warmup + steps):
            for filled in kinds if step % 2 == 0 else kinds[::-1]:
                seen.clear()
                filling[0] = filled
                t0 = _now(device)
                x, y = to_device(next(w.batches), device)
                t1 = _now(device)
                with autocast(device, cfg.trainer.precision):
                    loss = w.loss_fn(w.model(x), y)
                t2 = _now(device)
                loss.backward()
                t3 = _now(device)
                if filled:  # as the reducer's wait() leaves them: the bucket slices
                    for p, view in zip(w.params, w.views):
                        p.grad = view.view_as(p).to(p.dtype)
                elif w.views is None:
                    w.fill()
                tf = _now(device)
                w.optimizer.step()
                w.optimizer.zero_grad(set_to_none=True)
                t4 = _now(device)
                if step < warmup:
                    continue
                if filled:
                    hooked.append(t3 - t2)
                    continue
                data.append(t1 - t0)
                fwd.append(t2 - t1)
                bwd.append(t3 - t2)
                fills.append(tf - t3)
                opt.append(t4 - tf)
                total.append(t4 - t0 - (tf - t3))  # one worker's own step: it never fills
                ready.append(ready_fractions(seen, w.plan.members, t2, t3))
    finally:
        w.batches.close()
        for h in handles:
            h.remove()

    med = statistics.median
    buckets = tuple(
        Bucket(size * w.elsize, med(r[b] for r in ready)) for b, size in enumerate(w.plan.sizes)
    )
    cv = robust_cv(total)  # the estimator measured runs use, so both kinds of jitter compare
    return Profile(
        batch=batch, forward_s=med(fwd), backward_s=med(bwd), optimizer_s=med(opt), data_s=med(data),
        buckets=buckets, flops_per_sample=float(flops), cv=cv,
        fill_s=med(h - b for h, b in zip(hooked, bwd)) if hooked else med(fills),  # paired: a step apart
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
