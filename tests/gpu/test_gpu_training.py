"""On a GPU: the trainer's CUDA path (device placement, bf16 autocast, event-based step timing)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ddtrain.dist.env import LaunchEnv
from ddtrain.dist.group import init_distributed
from ddtrain.trainer import train
from tests.gloo.workloads import tiny

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_single_gpu_run_logs_finite_times_and_loss(precision):
    ctx = init_distributed(LaunchEnv(), backend="auto", device="cuda", timeout_s=60)
    assert ctx.device.type == "cuda"
    cfg = tiny("gpt", batch=8, steps=4)
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, precision=precision))
    result = train(cfg, ctx)
    assert all(p.device.type == "cuda" for p in result.model.parameters())
    last = result.history[-1]
    assert math.isfinite(last["loss"]) and last["step_time_s"] > 0 and last["compute_s"] > 0


def test_gpu_run_matches_cpu_run_in_fp32():
    cfg = tiny("mlp", batch=8, steps=3)
    cpu = train(cfg, init_distributed(LaunchEnv(), backend="auto", device="cpu", timeout_s=60))
    gpu = train(cfg, init_distributed(LaunchEnv(), backend="auto", device="cuda", timeout_s=60))
    for (name, a), (_, b) in zip(cpu.model.state_dict().items(), gpu.model.state_dict().items()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-4, msg=name)
