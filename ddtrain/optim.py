"""Optimizer and learning-rate schedule from ``cfg.optim``."""

from __future__ import annotations

import math

import torch
from torch import nn

from ddtrain.config import OptimConfig


def lr_factor(step: int, total: int, cfg: OptimConfig) -> float:
    """Multiplier on ``cfg.lr`` for optimizer step ``step`` (0-based). Pure, so it is tested alone.

    Linear warm-up over ``warmup_steps``, then constant, cosine or linear decay down to
    ``min_lr_ratio`` at the last step.
    """
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = total - cfg.warmup_steps - 1  # decay steps after the first one
    progress = 1.0 if span <= 0 else min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.schedule == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:  # linear
        shape = 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


def build_optimizer(cfg: OptimConfig, model: nn.Module, total_steps: int, fused: bool = True):
    """The optimizer and its schedule. ``fused=False``: torch's multi-tensor (foreach) update
    instead, the implementation that also runs where no fused kernel exists (the meta device)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                              foreach=None if fused else True)
    else:
        # fused: one kernel for the whole update. On CPU the foreach/for-loop paths measured
        # ~0.22 s per step for 0.9M parameters against ~1 ms fused (torch 2.13, 2 cores).
        opt = torch.optim.AdamW(
            params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
            fused=fused, foreach=None if fused else True,
        )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps, cfg))
    return opt, sched


def follow_schedule(opt: torch.optim.Optimizer, sched, cfg: OptimConfig, total_steps: int, step: int) -> None:
    """Put ``opt`` at step ``step`` of this run's schedule after a checkpoint was loaded into it.

    A loaded optimizer carries the LR its own run had set for ``step``. When ``trainer.steps`` or
    ``optim.lr`` changed since, that LR belongs to another schedule, and the first update after
    resuming would use it; the LR stays a function of the step number and this run's settings.
    """
    sched.base_lrs = [cfg.lr] * len(opt.param_groups)
    for group in opt.param_groups:
        group["initial_lr"] = cfg.lr
        group["lr"] = cfg.lr * lr_factor(step, total_steps, cfg)
