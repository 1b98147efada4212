"""Learning-rate schedule shapes, and the optimizer each config builds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ddtrain.config import OptimConfig
from ddtrain.optim import build_optimizer, lr_factor

TOTAL = 50


def factors(cfg: OptimConfig, total: int = TOTAL) -> list[float]:
    return [lr_factor(step, total, cfg) for step in range(total)]


# --------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("schedule", ["constant", "cosine", "linear"])
def test_warmup_ramps_linearly_to_one(schedule):
    warmup = 8
    f = factors(OptimConfig(schedule=schedule, warmup_steps=warmup))
    ramp = f[:warmup]
    assert ramp[0] > 0  # the first step already moves the weights
    assert ramp[-1] == 1.0
    steps = [b - a for a, b in zip(ramp, ramp[1:])]
    assert all(math.isclose(s, ramp[0]) for s in steps)  # equal increments from 1/warmup
    assert f[warmup] == 1.0  # decay starts from the full rate


def test_constant_stays_at_one():
    assert factors(OptimConfig(schedule="constant")) == [1.0] * TOTAL
    assert factors(OptimConfig(schedule="constant", warmup_steps=5))[5:] == [1.0] * (TOTAL - 5)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("warmup", [0, 7])
@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.1, 1.0])
def test_decay_ends_at_the_floor_on_the_last_step(schedule, warmup, min_lr_ratio):
    f = factors(OptimConfig(schedule=schedule, warmup_steps=warmup, min_lr_ratio=min_lr_ratio))
    assert f[warmup] == 1.0
    assert math.isclose(f[-1], min_lr_ratio, abs_tol=1e-12)
    assert all(min_lr_ratio - 1e-12 <= x <= 1.0 for x in f[warmup:])


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_is_monotone_after_warmup(schedule):
    warmup = 5
    decay = factors(OptimConfig(schedule=schedule, warmup_steps=warmup, min_lr_ratio=0.1))[warmup:]
    assert all(b < a for a, b in zip(decay, decay[1:]))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_decay_is_point_symmetric_about_its_midpoint(schedule):
    # Both shapes fall from 1 to the floor symmetrically: f(start + k) + f(end - k) is constant,
    # and equals the value halfway, min + (1 - min) / 2.
    cfg = OptimConfig(schedule=schedule, warmup_steps=4, min_lr_ratio=0.2)
    total = 4 + 21  # 21 decay steps: the middle one (index 10) is exactly halfway
    decay = factors(cfg, total)[4:]
    middle = 0.2 + (1 - 0.2) / 2
    assert math.isclose(decay[10], middle)
    for k in range(len(decay)):
        assert math.isclose(decay[k] + decay[-1 - k], 2 * middle)


def test_linear_falls_by_equal_steps():
    decay = factors(OptimConfig(schedule="linear", min_lr_ratio=0.0), total=11)
    assert all(math.isclose(a - b, 0.1) for a, b in zip(decay, decay[1:]))


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_steps_past_the_end_stay_at_the_floor(schedule):
    cfg = OptimConfig(schedule=schedule, min_lr_ratio=0.1)
    assert math.isclose(lr_factor(TOTAL + 10, TOTAL, cfg), 0.1)


# --------------------------------------------------------------------------- optimizer
def tiny_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)  # frozen parameters stay out of the optimizer
    return model


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def test_sgd_gets_the_configured_hyperparameters():
    cfg = OptimConfig(name="sgd", lr=0.05, momentum=0.8, weight_decay=1e-4, schedule="constant")
    model = tiny_model()
    opt, _ = build_optimizer(cfg, model, total_steps=10)
    assert type(opt) is torch.optim.SGD
    (group,) = opt.param_groups
    assert group["lr"] == 0.05 and group["initial_lr"] == 0.05
    assert (group["momentum"], group["weight_decay"]) == (0.8, 1e-4)
    assert [id(p) for p in group["params"]] == [id(p) for p in trainable(model)]


def test_adamw_gets_the_configured_hyperparameters():
    cfg = OptimConfig(name="adamw", lr=3e-4, beta1=0.8, beta2=0.99, weight_decay=0.1)
    model = tiny_model()
    opt, _ = build_optimizer(cfg, model, total_steps=10)
    assert type(opt) is torch.optim.AdamW
    (group,) = opt.param_groups
    assert group["initial_lr"] == 3e-4
    assert group["betas"] == (0.8, 0.99) and group["weight_decay"] == 0.1
    assert [id(p) for p in group["params"]] == [id(p) for p in trainable(model)]


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_scheduler_follows_lr_factor_and_the_optimizer_steps_on_cpu(name):
    cfg = OptimConfig(name=name, lr=0.01, schedule="cosine", warmup_steps=3, min_lr_ratio=0.1)
    total = 12
    model = tiny_model()
    opt, sched = build_optimizer(cfg, model, total_steps=total)
    before = [p.detach().clone() for p in model.parameters()]
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])  # the rate this optimizer step uses
        model(torch.ones(2, 3)).sum().backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    expected = [cfg.lr * lr_factor(s, total, cfg) for s in range(total)]
    assert seen == pytest.approx(expected, rel=1e-12)
    after = list(model.parameters())
    assert not torch.equal(before[-1], after[-1])  # trained
    assert torch.equal(before[1], after[1])  # the frozen bias did not move
