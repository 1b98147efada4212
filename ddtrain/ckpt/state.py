"""What a checkpoint holds, and whether a run may continue from one.

A checkpoint is one plain dict (tensors, numbers, strings: safe for ``weights_only`` loading):
the model, the optimizer and its LR schedule, the step, the data position, and every rank's RNG
state. The data position is the loader's (``data``: its next micro-step, seed and the data set's
length): batches are a pure function of the micro-step (``data/loader.py``), so
``samples_seen = step x global batch`` pins it, and any world size with the same global batch
reads the same samples from there on, mid-epoch too. A data set whose length changed since is
refused: its positions no longer name the same samples.

Continuing is exact on the same world size (same RNG streams, same reduction order). On another
world size with the same global batch the samples are the same but each rank's RNG stream cannot
be mapped, so ranks are re-seeded (this matters only for models that draw random numbers while
training, e.g. dropout) and sums are taken in another order: the curve continues, not bit for bit.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from typing import Any

import torch

from ddtrain import __version__
from ddtrain.config import TrainConfig, to_flat_dict
from ddtrain.dist.group import DistContext, all_gather_rows
from ddtrain.errors import EXIT_BAD_INPUT, JobError
from ddtrain.optim import follow_schedule

log = logging.getLogger(__name__)

FORMAT = 1


class ResumeRefused(JobError):
    """The checkpoint cannot continue this run (every rank reaches the same verdict)."""

    exit_code = EXIT_BAD_INPUT


def global_batch(cfg: TrainConfig, world_size: int) -> int:
    return world_size * cfg.data.batch_size * cfg.trainer.grad_accum


def _rng_row(device: torch.device) -> torch.Tensor:
    """This rank's RNG state as one uint8 row: the CPU generator, then the GPU's if training
    on one. Every rank's row has the same length, so the rows gather into one tensor."""
    parts = [torch.get_rng_state()]
    if device.type == "cuda":
        parts.append(torch.cuda.get_rng_state(device))
    return torch.cat(parts)


def _set_rng_row(row: torch.Tensor, device: torch.device) -> None:
    cpu = torch.get_rng_state()
    torch.set_rng_state(row[: cpu.numel()].clone())
    if device.type == "cuda":
        torch.cuda.set_rng_state(row[cpu.numel():].clone(), device)


def capture(step: int, rep, ctx: DistContext, cfg: TrainConfig, counters: dict[str, int]) -> dict | None:
    """The checkpoint of step ``step`` on rank 0 (None elsewhere). A collective: every rank
    must call it, after the same step, because every rank's RNG state is gathered."""
    rng = all_gather_rows(ctx, _rng_row(ctx.device))
    # Unsharded format whatever comm.shard is: a sharded run gathers its optimizer state here.
    optimizer = rep.engine.optimizer_state_dict(rep.optimizer)
    if not ctx.is_main:
        return None
    flat = to_flat_dict(cfg)
    gb = global_batch(cfg, ctx.world_size)
    return {
        "format": FORMAT,
        "ddtrain_version": __version__,
        "saved_at": _dt.datetime.now().isoformat(timespec="seconds"),
        "step": step,
        "samples_seen": step * gb,
        "world_size": ctx.world_size,
        "global_batch": gb,
        "batch_size": cfg.data.batch_size,
        "grad_accum": cfg.trainer.grad_accum,
        "model": rep.model.state_dict(),
        "optimizer": optimizer,
        "scheduler": rep.scheduler.state_dict(),
        "data": rep.loader.state_dict(),
        "rng": rng,  # [world_size, bytes]: row r is rank r's generators
        "rng_device": ctx.device.type,
        "config": json.dumps(flat, sort_keys=True),
        "counters": dict(counters),
    }


# Settings that steer bookkeeping, not the computation: changing them on resume is routine.
_BOOKKEEPING = ("trainer.ckpt", "trainer.resume", "trainer.checkpoint", "trainer.progress",
                "trainer.log_every", "trainer.threads", "trainer.save_model", "comm.timeout_s",
                "comm.verify_every", "tensorboard")


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    keys = sorted(k for k in set(saved) | set(now) if not k.startswith(_BOOKKEEPING))
    return [f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k)]


def check_resume(state: dict, cfg: TrainConfig, world_size: int, source: str) -> list[str]:
    """Refuse (``ResumeRefused``) a checkpoint this run cannot continue; return warnings for
    what it can live with. Pure: every rank decides alike from the same bytes."""
    if state.get("format") != FORMAT:
        raise ResumeRefused(f"cannot resume from {source}: checkpoint format {state.get('format')!r}, "
                            f"this ddtrain reads format {FORMAT}; use the ddtrain version that wrote it")
    saved_cfg = json.loads(state["config"])
    now_cfg = to_flat_dict(cfg)
    gb = global_batch(cfg, world_size)
    if state["global_batch"] != gb:
        raise ResumeRefused(
            f"cannot resume from {source}: it was written with a global batch of {state['global_batch']} "
            f"({state['world_size']} ranks x data.batch_size {state['batch_size']} x trainer.grad_accum "
            f"{state['grad_accum']}) and this run has {gb} ({world_size} x {cfg.data.batch_size} x "
            f"{cfg.trainer.grad_accum}): the data position and the optimizer's trajectory are per global "
            f"batch. Fix: choose data.batch_size and trainer.grad_accum so that ranks x batch x accum = "
            f"{state['global_batch']}, or start afresh with trainer.resume=never")
    if saved_cfg.get("optim.name") != now_cfg.get("optim.name"):
        raise ResumeRefused(
            f"cannot resume from {source}: its optimizer state is {saved_cfg.get('optim.name')}'s and this "
            f"run uses optim={now_cfg.get('optim.name')}; use optim={saved_cfg.get('optim.name')}, or start "
            "afresh with trainer.resume=never")
    if state["step"] > cfg.trainer.steps:
        raise ResumeRefused(
            f"cannot resume from {source}: it is at step {state['step']}, beyond trainer.steps="
            f"{cfg.trainer.steps}; raise trainer.steps or start afresh with trainer.resume=never")
    warnings = []
    changed = _differences(saved_cfg, now_cfg)
    if changed:
        warnings.append(f"resuming with {len(changed)} changed setting(s): " + "; ".join(changed))
    if state["world_size"] != world_size:
        warnings.append(
            f"resuming {state['world_size']} ranks' checkpoint on {world_size}: same global batch, so the "
            "same samples from here on; RNG streams are re-seeded and sums taken in another order, so the "
            "loss curve continues but not bit for bit")
    return warnings


def restore(state: dict, rep, ctx: DistContext, cfg: TrainConfig, source: str) -> int:
    """Load ``state`` into this rank's replica; return the step to continue from."""
    try:
        rep.model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = " ".join(str(e).split())[:300]
        raise ResumeRefused(
            f"cannot resume from {source}: its model does not fit this one ({first}); use the model.* "
            "settings of the run that wrote it, or trainer.resume=never") from None
    data = state.get("data")
    if data is not None and data["dataset_len"] != len(rep.loader.dataset):
        raise ResumeRefused(
            f"cannot resume from {source}: it read a data set of {data['dataset_len']} samples and this "
            f"run's data={cfg.data.name} has {len(rep.loader.dataset)}, so its data position names other "
            "samples; use the data it was written with, or start afresh with trainer.resume=never")
    rep.engine.load_optimizer_state_dict(rep.optimizer, state["optimizer"])
    rep.scheduler.load_state_dict(state["scheduler"])
    follow_schedule(rep.optimizer, rep.scheduler, cfg.optim, cfg.trainer.steps, int(state["step"]))
    # The micro-step after the checkpoint's last batch: step x global batch samples from the
    # start, whatever world size and accumulation split that global batch.
    rep.loader.step = int(state["step"]) * cfg.trainer.grad_accum
    rng = state["rng"]
    if rng.shape[0] == ctx.world_size and state["rng_device"] == ctx.device.type:
        _set_rng_row(rng[ctx.rank], ctx.device)
    else:
        # Distinct and reproducible per rank and step; see the module docstring.
        torch.manual_seed(cfg.seed + 1_000_003 * state["step"] + ctx.rank)  # seeds the GPUs too
    return int(state["step"])
