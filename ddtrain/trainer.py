"""The training loop. Reads top to bottom; distribution shows up only as ``ctx`` and ``engine``."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ddtrain.ckpt.manager import Checkpointer, checkpoint_dir
from ddtrain.comm.engines import build_engine
from ddtrain.compile import compile_regions
from ddtrain.config import TrainConfig, to_flat_dict, to_mapping
from ddtrain.data import build_dataset, spec_of
from ddtrain.data.feed import loader_workers, to_device, train_loader, val_batches
from ddtrain.data.loader import ShardLoader
from ddtrain.dist.group import DistContext, all_gather_rows, all_max_each
from ddtrain.errors import JobError
from ddtrain.evaluate import evaluate
from ddtrain.fault.replica import check_replicas, verify_replicas
from ddtrain.launcher.cores import usable_cpus
from ddtrain.loss import LossFn, build_loss
from ddtrain.metrics import MetricsProcessor, make_writer
from ddtrain.metrics.memory import describe as describe_memory
from ddtrain.metrics.memory import peak_bytes, state_bytes
from ddtrain.metrics.processor import StepView, Workload
from ddtrain.models import build_model
from ddtrain.optim import build_optimizer
from ddtrain.perf.clock import StepClock
from ddtrain.perf.flops import flops_per_sample
from ddtrain.registry import input_kind

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: nn.Module  # the bare model (not the DDP wrapper)
    engine: Any = None  # the gradient-sync engine that ran (its bucket plan, for inspection)
    history: list[dict[str, Any]] = field(default_factory=list)  # the logged records
    validations: list[dict[str, Any]] = field(default_factory=list)  # the validation passes' records
    start_step: int = 0  # > 0: resumed from the checkpoint of that step
    stopped_by: str | None = None  # the signal that ended the run early (after a checkpoint)
    checkpoint: Path | None = None  # the last checkpoint this run wrote (rank 0)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _progress(enabled: bool, total: int, start: int = 0):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", mininterval=1.0, dynamic_ncols=True)


@dataclass
class Replica:
    """This rank's copy of everything one optimizer step touches."""

    model: nn.Module
    engine: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: LossFn
    loader: ShardLoader  # this rank's batches; its position is the checkpoint's data position


def make_model(cfg: TrainConfig, spec) -> nn.Module:
    """The model, on the CPU, initialised from ``cfg.seed``: the same weights on every rank
    (rank 0's are broadcast anyway)."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, spec)


def build_replica(cfg: TrainConfig, ctx: DistContext, dataset, on_event=None, model: nn.Module | None = None
                  ) -> Replica:
    """``model``: one made by ``make_model`` already (the CLI builds it before the process group,
    so a user's model that fails to build fails alone, in one line)."""
    model = (model if model is not None else make_model(cfg, spec_of(dataset))).to(ctx.device)
    # A compiled block cannot wait for a bucket's gather inside its graph: gather after the step.
    engine = build_engine(model, ctx, cfg.comm, on_event=on_event, overlap_gather=not cfg.trainer.compile)
    optimizer, scheduler = build_optimizer(cfg.optim, model, cfg.trainer.steps)
    optimizer = engine.wrap_optimizer(optimizer)
    workers = loader_workers(cfg.data, dataset, usable_cpus(), ctx.env.local_world_size)
    loader = train_loader(cfg.data, dataset, rank=ctx.rank, world_size=ctx.world_size, seed=cfg.seed,
                          workers=workers, pin_memory=ctx.device.type == "cuda")
    return Replica(model, engine, optimizer, scheduler, build_loss(cfg.loss), loader)


@dataclass
class StepOutcome:
    loss: torch.Tensor  # this rank's mean loss (a device tensor: reading it would sync)
    data_s: float  # host seconds spent waiting for batches
    grad_norm: float  # of the averaged gradient
    skipped: bool  # non-finite gradient: no update (trainer.on_nonfinite=skip)
    stop: bool  # some rank received a stop signal: every rank stops after this step
    save: bool  # rank 0's clock says a time-based checkpoint is due
    memory: dict[str, int] | None = None  # this rank's training-state bytes, when asked for


def train_step(rep: Replica, batches: Iterator[Any], step: int, cfg: TrainConfig, ctx: DistContext,
               clock: StepClock, *, stop_requested: bool = False, save_due: bool = False,
               count_memory: bool = False) -> StepOutcome:
    """One optimizer step: grad_accum micro-steps (``batches`` gives one batch each), the
    gradient sync, the agreement, the update. ``count_memory``: count the training state after
    the update, while gradients and optimizer state both exist."""
    t, device = cfg.trainer, clock.device
    clock.start_step()
    step_loss = torch.zeros((), device=device)
    data_s = 0.0
    for micro in range(t.grad_accum):
        t0 = time.perf_counter()  # the host's wait for a batch; no device sync needed
        x, y = next(batches)
        x, y = to_device(x, device), to_device(y, device)
        data_s += time.perf_counter() - t0
        # In data-parallel training only the last micro-step communicates: the earlier ones
        # accumulate gradients locally (no_sync).
        last = micro == t.grad_accum - 1
        with contextlib.nullcontext() if last else rep.engine.no_sync():
            with autocast(device, t.precision):
                loss = rep.loss_fn(rep.engine.module(x), y)
            clock.mark("forward")  # the batch's wait is in it too, taken out from data_s later
            (loss / t.grad_accum).backward()
            clock.mark("backward")
        step_loss += loss.detach() / t.grad_accum
    rep.engine.wait()  # the gradient all-reduces still in flight after backward
    clock.mark("comm_exposed")

    # Every rank must take the same branch below (update or skip, go on or stop, save or not),
    # so the three flags are agreed in one tiny all-reduce (MAX). Reading the gradient norm is
    # the step's one deliberate host sync: the update must not run before the verdict.
    # With sharding a rank holds a shard of the gradient, and the norm is summed across ranks.
    holders = rep.engine.grad_holders()
    norm = rep.engine.grad_norm([h.grad for _, h in holders])
    grad_norm = float(norm)  # host sync
    nonfinite, stop, save = (flag > 0 for flag in all_max_each(
        ctx, [float(not math.isfinite(grad_norm)), float(stop_requested), float(save_due)]))
    if nonfinite and t.on_nonfinite == "stop":
        raise JobError(_nonfinite_message(holders, step + 1, grad_norm))
    if not nonfinite:
        if cfg.optim.grad_clip > 0:
            nn.utils.clip_grads_with_norm_([h for _, h in holders], cfg.optim.grad_clip, norm)
        rep.optimizer.step()
    # A skipped step still advances the schedule: the LR stays a function of the step number.
    rep.scheduler.step()
    memory = state_bytes(rep.engine, rep.optimizer) if count_memory else None
    rep.optimizer.zero_grad(set_to_none=True)
    clock.mark("optimizer")
    return StepOutcome(step_loss, data_s, grad_norm, nonfinite, stop, save, memory)


def _nonfinite_message(holders: list[tuple[str, torch.Tensor]], step: int, grad_norm: float) -> str:
    first = next((n for n, h in holders if not torch.isfinite(h.grad).all()), "another rank's gradient shard")
    return (f"non-finite gradient at step {step} (norm {grad_norm}, first in {first}); stopping on every "
            "rank (trainer.on_nonfinite=stop). Fix: lower optim.lr, set optim.grad_clip, or check the "
            "data; trainer.on_nonfinite=skip skips such steps instead; resume with trainer.resume=auto")


def train(
    cfg: TrainConfig,
    ctx: DistContext,
    run_dir: Path | None = None,
    *,
    dataset=None,
    val_dataset=None,
    model: nn.Module | None = None,
    on_event=None,
    stop=None,
    on_step: Callable[[int, Replica], None] | None = None,
) -> TrainResult:
    """Train ``cfg`` on this rank. ``run_dir`` None: write nothing (tests); rank 0 writes otherwise.

    ``dataset``/``val_dataset``/``model``: built already (the CLI builds them before the process
    group); None: built here. ``stop``: a ``fault.signals.StopRequest`` (the CLI installs one for
    SIGTERM/SIGUSR1); ``on_step(step, replica)`` runs after every step (tests inject faults).
    """
    t = cfg.trainer
    if dataset is None:
        dataset, val_dataset = build_datasets(cfg)
    rep = build_replica(cfg, ctx, dataset, on_event, model)
    flat_cfg = to_flat_dict(cfg)
    check_replicas(ctx, rep.model, flat_cfg)  # same model and config everywhere, or stop now
    ckpt = Checkpointer(cfg, ctx, checkpoint_dir(cfg, run_dir))
    start, counters = ckpt.resume(rep)
    clock = StepClock(ctx.device)
    metrics = _metrics(cfg, ctx, rep, clock, run_dir, flat_cfg, start)
    _log_start(cfg, ctx, rep, ckpt, start, metrics.workload)
    if t.compile:  # after the FLOP count, which runs the eager model once
        blocks = compile_regions(rep.model)
        log.info("trainer.compile: %d block(s) compiled with torch.compile, one graph each, so gradients "
                 "appear block by block and buckets launch during backward; the first step compiles", blocks)
    validate = _validation(cfg, ctx, rep, val_dataset, metrics)

    result = TrainResult(model=rep.model, engine=rep.engine, start_step=start, history=metrics.history,
                         validations=metrics.validations)
    batches = rep.loader.stream()
    try:  # the files and the loader's workers are closed on every exit, a failure's included
        for step in range(start, t.steps):
            t0 = time.perf_counter()
            out = train_step(rep, batches, step, cfg, ctx, clock,
                             stop_requested=stop is not None and stop.requested,
                             save_due=ctx.is_main and ckpt.time_due(), count_memory=step == start)
            done = step + 1
            if out.memory is not None:
                _log_memory(ctx, out.memory, metrics)
            if t.compile and step == start:
                log.info("trainer.compile: the first step, compiling included, took %.1f s; it is left out "
                         "of throughput", time.perf_counter() - t0)
            if out.skipped:
                counters["nonfinite_skipped"] += 1
                log.warning("step %d: non-finite gradient (norm %s), update skipped "
                            "(trainer.on_nonfinite=skip); %d skipped so far",
                            done, out.grad_norm, counters["nonfinite_skipped"])
            metrics.step(StepView(done, out.loss, out.data_s, out.grad_norm,
                                  counters["nonfinite_skipped"], force=out.stop))
            evaluate_now = validate is not None and (done % t.eval_every == 0 or done == t.steps)
            verify_now = bool(cfg.comm.verify_every) and done % cfg.comm.verify_every == 0
            save_now = out.stop or done == t.steps or ckpt.due(done, out.save)
            if evaluate_now or verify_now or save_now or on_step is not None:
                rep.engine.gathered()  # sharded parameters may still be on their way
            if evaluate_now:
                validate(done)
            # Checked before saving, so a diverged state never becomes the newest checkpoint.
            if verify_now:
                verify_replicas(ctx, rep.model, done)
            if save_now:
                result.checkpoint = ckpt.save(done, rep, counters)
            if out.stop:
                mine = stop is not None and stop.requested
                result.stopped_by = stop.signal_name if mine else "another rank's signal"
                log.warning("stopped after step %d (%s)%s", done, result.stopped_by,
                            "; checkpoint written, continue with trainer.resume=auto"
                            if ckpt.directory is not None else "")
                break
            if on_step is not None:
                on_step(done, rep)
    finally:
        batches.close()
        metrics.close()
    rep.engine.gathered()
    if t.save_model and ctx.is_main and run_dir is not None:
        torch.save(rep.model.state_dict(), run_dir / "model.pt")
    return result


def _log_memory(ctx: DistContext, mine: dict[str, int], metrics: MetricsProcessor) -> None:
    """The largest rank's training-state bytes (ranks differ by a shard's padding), logged
    once and carried by every metrics record."""
    keys = sorted(mine)
    counted = {k: int(v) for k, v in zip(keys, all_max_each(ctx, [float(mine[k]) for k in keys]))}
    log.info("memory: %s (the largest rank's, counted after the first update)", describe_memory(counted))
    peaks = all_gather_rows(ctx, torch.tensor([float(peak_bytes(ctx.device))], dtype=torch.float64))
    kind = "GPU memory allocated" if ctx.device.type == "cuda" else "RSS"
    log.info("peak %s per rank so far: %s", kind,
             ", ".join(f"rank {r} {p / 2**20:.0f} MiB" for r, p in enumerate(peaks[:, 0].tolist())))
    metrics.memory = counted


def build_datasets(cfg: TrainConfig) -> tuple[Any, Any]:
    """(training set, validation set or None) for ``cfg``; ValueError in one line when a file
    is missing or unreadable. The validation set is built only when a pass will read it."""
    kind = input_kind(cfg.model.name, cfg.data.name)
    train_set = build_dataset(cfg.data, kind, cfg.seed)
    val_set = build_dataset(cfg.data, kind, cfg.seed, split="val") if cfg.trainer.eval_every else None
    return train_set, val_set


def _validation(cfg: TrainConfig, ctx: DistContext, rep: Replica, val_dataset,
                metrics: MetricsProcessor) -> Callable[[int], None] | None:
    """The pass run every ``trainer.eval_every`` steps, or None when there is none."""
    if not cfg.trainer.eval_every or val_dataset is None:
        return None
    workers = loader_workers(cfg.data, val_dataset, usable_cpus(), ctx.env.local_world_size)

    def validate(step: int) -> None:
        batches = val_batches(val_dataset, cfg.data.batch_size, rank=ctx.rank, world_size=ctx.world_size,
                              workers=workers, prefetch=cfg.data.prefetch)
        result = evaluate(rep.model, rep.loss_fn, batches, ctx,
                          autocast=lambda: autocast(ctx.device, cfg.trainer.precision))
        metrics.validation(step, result)

    return validate


def _metrics(cfg: TrainConfig, ctx: DistContext, rep: Replica, clock: StepClock, run_dir: Path | None,
             flat_cfg: dict[str, Any], start: int) -> MetricsProcessor:
    """The run's records: rank 0 writes them (metrics.jsonl, TensorBoard); other ranks compute
    the same collectives and write nothing."""
    t, loader = cfg.trainer, rep.loader
    spec = spec_of(loader.dataset)
    writer = make_writer(ctx.is_main, run_dir, flat_cfg, cfg.tensorboard, resume_step=start or None)
    if not start:
        writer.text("config", json.dumps(to_mapping(cfg), indent=2))  # readable, nested
    flops, source = flops_per_sample(
        rep.model, lambda: tuple(to_device(part, ctx.device) for part in loader.batch_at(0)),
        loader.batch_size, rep.loss_fn)
    workload = Workload(samples_per_step=ctx.world_size * cfg.data.batch_size * t.grad_accum,
                        flops_per_sample=flops, flops_source=source,
                        tokens_per_sample=spec.seq_len if spec.kind == "tokens" else 0)
    return MetricsProcessor(
        ctx, writer, clock, workload, log_every=t.log_every, last_step=t.steps,
        measures_exposed_comm=rep.engine.measures_exposed_comm,
        lr=lambda: rep.scheduler.get_last_lr()[0],
        epoch=lambda done: loader.epoch(done * t.grad_accum),
        progress=_progress(t.progress and ctx.is_main, t.steps, start),
        uncounted_through=start + 1 if t.compile else 0,
    )


def _log_start(cfg: TrainConfig, ctx: DistContext, rep: Replica, ckpt: Checkpointer, start: int,
               workload: Workload) -> None:
    t = cfg.trainer
    n_params = sum(p.numel() for p in rep.model.parameters())
    name = cfg.model.target if cfg.model.name == "custom" else cfg.model.name
    log.info(
        "model=%s (%.2fM params, %.3g GFLOP/sample fwd+bwd, %s), data=%s (%d samples, %d loader "
        "workers), %d ranks x batch %d x accum %d",
        name, n_params / 1e6, workload.flops_per_sample / 1e9, workload.flops_source, cfg.data.name,
        len(rep.loader.dataset), rep.loader.workers, ctx.world_size, cfg.data.batch_size, t.grad_accum,
    )
    log.info("%s", rep.engine.describe())
    if ckpt.directory is not None:
        log.info("checkpoints: %s (every %d steps%s, newest %d kept)", ckpt.directory, t.ckpt_every,
                 f" or {t.ckpt_every_min:g} min" if t.ckpt_every_min else "", t.ckpt_keep)
    if start >= t.steps:
        log.info("the checkpoint is at step %d = trainer.steps: nothing left to train", start)
