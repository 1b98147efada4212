"""Training FLOPs per sample: the model's own count, or one counted batch.

A built-in model states its FLOPs with a formula (``flops_per_sample()``, forward and backward).
A user's model need not: then one batch is run forward and backward under
``torch.utils.flop_counter.FlopCounterMode``, which counts the matmuls and convolutions torch
dispatches (elementwise work is not counted, as in the formulas). The count runs on a copy of
the model with the RNG state set aside, so it changes nothing the training sees: not a weight,
not a BatchNorm statistic, not a random number.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

MODEL_FORMULA = "the model's flops_per_sample()"
COUNTED = "counted by FlopCounterMode on one batch"


def count_flops(model: nn.Module, x, y, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> int:
    """FLOPs of one forward and backward pass of ``loss_fn(model(x), y)``, for the whole batch."""
    from torch.utils.flop_counter import FlopCounterMode

    twin = copy.deepcopy(model)
    device = next(model.parameters(), torch.empty(0)).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), FlopCounterMode(display=False) as counter:
        loss_fn(twin(x), y).backward()
    return int(counter.get_total_flops())


def flops_per_sample(model: nn.Module, batch: Callable[[], tuple], samples: int,
                     loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> tuple[int, str]:
    """(training FLOPs per sample, where the number comes from). ``batch()`` gives one batch
    ``(x, y)`` of ``samples`` samples on the model's device; it is called only to count."""
    own = getattr(model, "flops_per_sample", None)
    if callable(own):
        return int(own()), MODEL_FORMULA
    x, y = batch()
    return count_flops(model, x, y, loss_fn) // samples, COUNTED
