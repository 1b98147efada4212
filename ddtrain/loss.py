"""The training loss: cross-entropy by default, or the user's ``loss._target_``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ddtrain.config import LossConfig
from ddtrain.targets import instantiate, resolve

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, computed in fp32, over classes (images: logits [B, C], y [B]) or every
    position (tokens, frames: logits [B, T, C], y [B, T]); the mean over all B*T positions."""
    return F.cross_entropy(logits.flatten(0, -2).float(), y.flatten())


def build_loss(cfg: LossConfig) -> LossFn:
    """``loss(output, target) -> scalar``. A class target (an nn.Module loss, say) is built with
    the extra keys, as ``hydra.utils.instantiate`` does; a function target is called with them
    bound, so a plain ``def my_loss(out, y, weight=1.0)`` works too."""
    if cfg.target is None:
        return cross_entropy
    target = resolve("loss._target_", cfg.target)
    if inspect.isclass(target):
        return instantiate("loss._target_", cfg.target, cfg.kwargs)
    return functools.partial(target, **cfg.kwargs) if cfg.kwargs else target
