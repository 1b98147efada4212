"""The validation pass: loss (and accuracy, for classifiers) over the whole validation set,
every sample read once by one rank, the sums reduced over all ranks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ddtrain.data.feed import to_device
from ddtrain.dist.group import DistContext, all_sum_each


def _samples(y: Any) -> int:
    return int(y.shape[0]) if isinstance(y, torch.Tensor) and y.dim() else 1


def _is_classifier(out: Any, y: Any) -> bool:
    """Logits [..., C] against integer labels [...]: accuracy means something."""
    return (isinstance(out, torch.Tensor) and isinstance(y, torch.Tensor) and not y.is_floating_point()
            and out.dim() == y.dim() + 1 and out.shape[:-1] == y.shape)


def evaluate(model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], batches: Iterable[Any],
             ctx: DistContext, *, autocast: Callable[[], Any] = contextlib.nullcontext) -> dict[str, float]:
    """{"val_loss": ..., "val_accuracy": ...} (accuracy only for classifiers): the loss is the
    mean of each batch's loss weighted by its samples, over every rank's batches. A collective:
    every rank calls it, even one whose share is empty."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros((), dtype=torch.float64, device=ctx.device)
    samples = positions = 0
    try:
        with torch.no_grad():
            for x, y in batches:
                x, y = to_device(x, ctx.device), to_device(y, ctx.device)
                with autocast():
                    out = model(x)
                n = _samples(y)
                loss_sum += loss_fn(out, y).double() * n
                samples += n
                if _is_classifier(out, y):
                    correct += (out.argmax(-1) == y).sum()
                    positions += y.numel()
    finally:
        model.train(was_training)
    # One host read of the device sums, after the whole pass: the pass is not timed per batch.
    total_loss, total_samples, total_correct, total_positions = all_sum_each(
        ctx, [float(loss_sum), float(samples), float(correct), float(positions)])
    result = {"val_loss": total_loss / max(total_samples, 1.0)}
    if total_positions:
        result["val_accuracy"] = total_correct / total_positions
    return result
