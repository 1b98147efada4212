"""The one-worker profile of a device the study does not run on, from the roofline.

One training step of the real model at the real per-worker batch is recorded op by op on the
meta device (shapes only: nothing is computed, so a model of any size records in seconds), and
each op is timed on the target's roofline (ddtrain/perf/efficiency.py). Forward, backward and
optimizer times are the sums per phase; a bucket is ready when its last gradient is, at that
point of the backward op sequence as timed on the target.

What it does not know, and so leaves out: the data wait (a GPU node's loader workers hide it:
data_s = 0), the speed of mixed precision's elementwise ops (recorded in fp32, as autocast
keeps most of them; the matmuls move half the bytes in bf16/fp16), and the fused optimizer
(the meta device has none: the multi-tensor update is recorded, which moves more bytes, so the
optimizer's time is an upper bound).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ddtrain.comm.buckets import MiB, plan_buckets
from ddtrain.comm.reducer import COMM_DTYPES
from ddtrain.config import TrainConfig
from ddtrain.data.feed import to_device, train_loader
from ddtrain.kernels.rnn_plan import Device, plan_recurrence
from ddtrain.loss import build_loss
from ddtrain.optim import build_optimizer
from ddtrain.perf.efficiency import device_roofline
from ddtrain.perf.flops import MODEL_FORMULA
from ddtrain.perf.opcount import OpRecord, Region, StepOps, record_step
from ddtrain.perf.roofline import Roofline, op_times
from ddtrain.scaling.measure import StudyError
from ddtrain.scaling.model import Bucket, Profile
from ddtrain.trainer import build_datasets, make_model

META = torch.device("meta")


@dataclass(frozen=True)
class RooflineProfile:
    """A profile from the roofline, and how it was made (for the report)."""

    profile: Profile
    device: Roofline
    fused_regions: int  # recurrences costed as one persistent kernel
    regions: int
    flops_source: str


def record_on_meta(cfg: TrainConfig, batch: int) -> tuple[StepOps, torch.nn.Module, int | None]:
    """One training step of ``cfg``'s model at ``batch`` per worker, recorded on the meta device,
    after one unrecorded step so the optimizer's state exists as in every later step.
    Returns the ops, the model, and the model's own FLOPs per sample if it states them."""
    dataset, _ = build_datasets(cfg)
    model = make_model(cfg, getattr(dataset, "spec", None))
    own = getattr(model, "flops_per_sample", None)
    flops = int(own()) if callable(own) else None
    model = model.to(META)  # built for this alone: its weights are not needed
    loader = train_loader(dataclasses.replace(cfg.data, batch_size=batch), dataset, rank=0, world_size=1,
                          seed=cfg.seed, workers=0, pin_memory=False)
    x, y = to_device(loader.batch_at(0), META)
    optimizer, _ = build_optimizer(cfg.optim, model, 2, fused=False)
    loss_fn = build_loss(cfg.loss)
    try:
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return record_step(model, x, y, loss_fn, optimizer), model, flops
    except (RuntimeError, NotImplementedError) as e:
        # A model that reads its values (x.item(), data-dependent branches) cannot run on shapes alone.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StudyError(
            f"the roofline device model cannot run {type(model).__name__} on the meta device (shapes "
            f"only): {reason}; fix: scale.device_model=measured, or give the GPU's rate with "
            "scale.given.samples_per_s") from None


def at_precision(records: list[OpRecord], precision: str) -> list[OpRecord]:
    """Records as a mixed-precision run moves them: matmuls read and write 2-byte values."""
    if precision == "fp32":
        return records
    half = lambda r: dataclasses.replace(r, bytes=r.bytes // 2, fresh_bytes=r.fresh_bytes // 2)  # noqa: E731
    return [half(r) if r.op_class == "matmul" else r for r in records]


def runs_persistent(region: Region, device: Roofline) -> bool:
    """Whether ddtrain's recurrence planner puts this recurrence in one persistent kernel on
    ``device`` (the path the model asks for, planned for the device's SMs and, where measured,
    its architecture's compiled kernels)."""
    info = region.info
    want = info.get("path", "auto")
    if region.kind != "recurrence" or want not in ("auto", "persistent") or not device.sm_count:
        return False
    plan = plan_recurrence(hidden=info["hidden"], batch=info["batch"], gates=info["gates"],
                           element_size=info["element_size"],
                           device=Device(device.sm_count, capability=device.capability), want=want,
                           mm=info.get("mm", "fma"))
    return plan.path == "persistent"


def ready_fractions(step: StepOps, times: list[float], members: list[list[int]]) -> list[float]:
    """When each bucket's last gradient exists, as a fraction of the backward time on the target."""
    start = next((i for i, r in enumerate(step.records) if r.phase == "backward"), len(step.records))
    elapsed = [0.0]
    for t in times[start:]:
        elapsed.append(elapsed[-1] + t)
    backward = sum(t for r, t in zip(step.records, times, strict=True) if r.phase == "backward") or 1.0

    def at(i: int) -> float:
        return min(1.0, elapsed[max(0, step.grad_ready_at[i] - start)] / backward)

    return [max(at(i) for i in m) for m in members]


def roofline_profile(cfg: TrainConfig, batch: int, device_key: str) -> RooflineProfile:
    """The one-worker profile of ``cfg`` at ``batch`` on ``device_key`` (a peak-table GPU)."""
    device = device_roofline(device_key, cfg.trainer.precision)
    step, model, own_flops = record_on_meta(cfg, batch)
    records = at_precision(step.records, cfg.trainer.precision)
    fused = {i for i, r in enumerate(step.regions) if runs_persistent(r, device)}
    times = op_times(records, device, step.regions, fused)
    phase = {p: sum(t for r, t in zip(records, times, strict=True) if r.phase == p)
             for p in ("forward", "backward", "optimizer")}
    params = [p for p in model.parameters() if p.requires_grad]
    elsize = COMM_DTYPES[cfg.comm.dtype].itemsize  # as the reducer plans its buckets
    plan = plan_buckets([p.numel() for p in params], elsize, cfg.comm.bucket_mb * MiB,
                        cfg.comm.first_bucket_mb * MiB)
    ready = ready_fractions(step, times, plan.members)
    buckets = tuple(Bucket(size * elsize, r) for size, r in zip(plan.sizes, ready, strict=True))
    if own_flops is not None:
        flops, source = own_flops, MODEL_FORMULA
    else:
        flops = sum(r.flops for r in records if r.phase != "optimizer") // batch
        source = "counted from the recorded step's matmuls (torch.utils.flop_counter's formulas)"
    profile = Profile(batch=batch, forward_s=phase["forward"], backward_s=phase["backward"],
                      optimizer_s=phase["optimizer"], data_s=0.0, buckets=buckets,
                      flops_per_sample=float(flops))
    return RooflineProfile(profile, device, len(fused), len(step.regions), source)
