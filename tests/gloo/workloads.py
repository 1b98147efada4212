"""Tiny configurations of every model, and the per-rank functions the dist tests run."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ddtrain.comm.buckets import MiB
from ddtrain.config import CommConfig, OptimConfig, TrainConfig, TrainerConfig
from ddtrain.data.speech import SpeechData
from ddtrain.data.synthetic import SyntheticData
from ddtrain.dist.env import LaunchEnv
from ddtrain.dist.group import DistContext
from ddtrain.models import build_model
from ddtrain.models.convnet import ConvNetConfig
from ddtrain.models.gpt import GPTConfig
from ddtrain.models.mlp import MLPConfig
from ddtrain.models.prnn import PRNNConfig
from ddtrain.models.resnet import ResNetConfig
from ddtrain.models.rnn import RNNConfig
from ddtrain.trainer import train

IMAGES = SyntheticData(samples=256, image_size=8, channels=3, num_classes=10)
# ResNet-18 downsamples 8 px to 1x1, where GroupNorm normalises a couple of values and magnifies
# rounding (measured: 5e-5 between 1 and 2 threads of the *same* run); 16 px keeps it at 4e-7.
IMAGES16 = SyntheticData(samples=256, image_size=16, channels=3, num_classes=10)
TOKENS = SyntheticData(samples=256, seq_len=16, vocab_size=32)
SPEECH = SpeechData(samples=256, seq_len=12, features=8, num_classes=6)

MODELS = {
    "mlp": (MLPConfig(hidden=32, layers=2), IMAGES),
    "convnet": (ConvNetConfig(width=8, stages=2), IMAGES),
    "resnet": (ResNetConfig(depth=18, width=8), IMAGES16),
    "rnn": (RNNConfig(embed=16, hidden=32, layers=2), TOKENS),
    "gpt": (GPTConfig(layers=2, heads=2, dim=32), TOKENS),
    "prnn": (PRNNConfig(conv_channels=8, hidden=16, layers=2), SPEECH),
}

# SGD with momentum: its update is linear in the gradient, so fp32 summation-order noise stays
# at rounding level. (Adam divides by sqrt(v), which magnifies noise in near-zero gradients.)
SGD = OptimConfig(name="sgd", lr=0.05, momentum=0.9, schedule="constant")


def model_bytes(name: str) -> int:
    model_cfg, data_cfg = MODELS[name]
    from ddtrain.data import build_dataset
    from ddtrain.registry import input_kind

    spec = build_dataset(data_cfg, input_kind(name, data_cfg.name), 0).spec
    return sum(p.numel() * 4 for p in build_model(model_cfg, spec).parameters())


def tiny(name: str, *, batch: int, steps: int = 3, accum: int = 1, **comm) -> TrainConfig:
    """Model ``name`` at per-rank ``batch``; buckets of ~1/4 of the model so there are several."""
    model_cfg, data_cfg = MODELS[name]
    bucket = model_bytes(name) / 4 / MiB
    comm_cfg = CommConfig(bucket_mb=bucket, first_bucket_mb=bucket, **comm)
    return TrainConfig(
        model=model_cfg,
        data=dataclasses.replace(data_cfg, batch_size=batch),
        optim=SGD,
        comm=comm_cfg,
        trainer=TrainerConfig(steps=steps, grad_accum=accum, log_every=1, progress=False),
        seed=1234,
    )


def single_process() -> DistContext:
    return DistContext(LaunchEnv(), torch.device("cpu"), None)


def params_of(result) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in result.model.state_dict().items()}


def bucket_shape(result) -> list[int]:
    """Tensors per bucket, or [] for engines without ddtrain's plan."""
    reducer = getattr(result.engine, "reducer", None)
    return [len(m) for m in reducer.plan.members] if reducer else []


# ----------------------------------------------------------------- per-rank functions
def train_each(ctx: DistContext, cfgs: dict[str, TrainConfig]) -> dict[str, dict]:
    out = {}
    for name, cfg in cfgs.items():
        result = train(cfg, ctx)
        out[name] = {
            "params": params_of(result),
            "buckets": bucket_shape(result),
            "loss": [r["loss"] for r in result.history],
        }
    return out


def train_with_events(ctx: DistContext, cfg: TrainConfig) -> dict:
    events: list[tuple[str, int]] = []
    result = train(cfg, ctx, on_event=lambda kind, idx: events.append((kind, idx)))
    return {"params": params_of(result), "events": events, "buckets": bucket_shape(result)}
