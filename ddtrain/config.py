"""Typed run configuration and its validation.

Hydra composes plain YAML groups (``configs/``); this module turns the composed tree into frozen
dataclasses and rejects bad values with one line that names the key, the value and what is
allowed. It runs before any process group exists, so a typo never costs a cluster allocation.
Each component receives only its own section (``cfg.model``, ``cfg.comm`` ...).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# How a persistent-RNN layer may run (ddtrain/kernels/rnn_plan.py picks among them). The config
# owns the names so that validating model.path needs no kernel module; the planner imports them.
RNN_PATHS = ("auto", "persistent", "stepwise", "cudnn", "reference")


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line naming key, value and fix."""


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class MLPConfig:
    name: str = "mlp"
    hidden: int = 256
    layers: int = 3  # hidden layers


@dataclass(frozen=True)
class ConvNetConfig:
    name: str = "convnet"
    width: int = 32  # channels of the first stage; doubled at each later stage
    stages: int = 3
    blocks_per_stage: int = 1
    norm: str = "group"  # group | batch


@dataclass(frozen=True)
class ResNetConfig:
    name: str = "resnet"
    depth: int = 18  # 18 | 34 | 50
    width: int = 64
    norm: str = "group"  # group | batch
    stem: str = "auto"  # auto | imagenet | cifar (auto: cifar for images below 64 px)


@dataclass(frozen=True)
class RNNConfig:
    name: str = "rnn"
    embed: int = 64
    hidden: int = 256
    layers: int = 2


@dataclass(frozen=True)
class GPTConfig:
    name: str = "gpt"
    layers: int = 4
    heads: int = 4
    dim: int = 128
    dropout: float = 0.0


@dataclass(frozen=True)
class PRNNConfig:
    name: str = "prnn"
    conv_layers: int = 1  # Conv1d layers over time in front of the recurrence (0: none)
    conv_channels: int = 128
    kernel: int = 5  # frames each conv sees; odd, so stride-1 'same' padding keeps every frame
    cell: str = "gru"  # gru | rnn
    nonlinearity: str = "relu"  # cell=rnn only: relu | tanh
    hidden: int = 128
    layers: int = 3  # recurrent layers
    path: str = "auto"  # one of RNN_PATHS (ddtrain/kernels/rnn_plan.py picks among them)


MODEL_SCHEMAS: dict[str, type] = {
    "mlp": MLPConfig,
    "convnet": ConvNetConfig,
    "resnet": ResNetConfig,
    "rnn": RNNConfig,
    "gpt": GPTConfig,
    "prnn": PRNNConfig,
}
ModelConfig = MLPConfig | ConvNetConfig | ResNetConfig | RNNConfig | GPTConfig | PRNNConfig


# --------------------------------------------------------------------------- the rest
@dataclass(frozen=True)
class DataConfig:
    name: str = "synthetic"  # synthetic | digits | chars | speech
    batch_size: int = 32  # per rank; the global batch is world_size * batch_size
    samples: int = 4096  # synthetic, speech: size of the generated data set
    image_size: int = 32  # synthetic images
    channels: int = 3  # synthetic images
    num_classes: int = 10  # synthetic images; speech: phoneme classes
    seq_len: int = 64  # token models: context length; speech: frames per utterance
    vocab_size: int = 64  # synthetic tokens
    paths: tuple[str, ...] = ()  # chars: text files; empty = the Python docs bundled with CPython
    features: int = 32  # speech: spectral channels per frame
    noise: float = 2.0  # speech: std of the per-frame noise (the class templates have unit variance)
    min_segment: int = 2  # speech: frames of the shortest phoneme segment
    max_segment: int = 8  # speech: frames of the longest


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd
    beta1: float = 0.9  # adamw
    beta2: float = 0.95  # adamw
    schedule: str = "constant"  # constant | cosine | linear
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # cosine/linear decay floor, as a fraction of lr
    grad_clip: float = 0.0  # max global grad norm; 0 disables


@dataclass(frozen=True)
class CommConfig:
    engine: str = "ddtrain"  # ddtrain | torch_ddp
    bucket_mb: float = 25.0
    first_bucket_mb: float = 1.0  # small first bucket so the first all-reduce starts early (as DDP)
    dtype: str = "fp32"  # fp32 | bf16 | fp16: the dtype gradients travel in
    pack: str = "auto"  # auto | triton | torch: how gradients are copied into the buckets
    backend: str = "auto"  # auto (nccl with CUDA, else gloo) | nccl | gloo
    timeout_s: float = 300.0  # a collective (and a silent peer) is given up after this long
    verify_every: int = 1000  # compare a checksum of the parameters across ranks every K steps; 0: never


@dataclass(frozen=True)
class TrainerConfig:
    steps: int = 100
    grad_accum: int = 1
    precision: str = "fp32"  # fp32 | bf16
    log_every: int = 10
    progress: bool = True
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # CPU threads per rank; 0 = cores / ranks on this node
    save_model: bool = True  # rank 0 writes the final state_dict to <run dir>/model.pt
    checkpoint: bool = True  # write checkpoints at all (a scaling study's timing runs turn them off)
    ckpt_every: int = 500  # steps between checkpoints; 0: only at the end and on a stop signal
    ckpt_every_min: float = 30.0  # also after this many minutes since the last one; 0: off
    ckpt_keep: int = 3  # the newest K checkpoints are kept
    ckpt_dir: str | None = None  # None: <run dir>/checkpoints
    resume: str = "auto"  # auto (newest valid checkpoint in ckpt_dir, if any) | never | PATH
    on_nonfinite: str = "stop"  # a NaN/inf gradient: stop the job, or skip that step's update


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=MLPConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    seed: int = 0
    tensorboard: bool = True


# --------------------------------------------------------------------------- conversion
def _coerce(key: str, value: Any, typ: Any) -> Any:
    """Check one leaf against its annotated type; ints are accepted where floats are."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):  # ``X | None``: null, or an X
        options = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(typ)):
            return None
        (only,) = options
        return _coerce(key, value, only)
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} is not a list; write {key}=[a,b]")
        (item,) = {a for a in typing.get_args(typ) if a is not Ellipsis}
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is not a boolean; use true or false")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} is not an integer")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} is not a number")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} is not a string")
        return value
    raise TypeError(f"unsupported config type {typ} for {key}")  # a bug in this file, not input


def _build(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix}={raw!r} must be a group of keys")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}.{unknown[0]}; {prefix} takes: {', '.join(names)}"
        )
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in raw]
    if missing:
        raise ConfigError(f"{prefix}.{missing[0]} is missing; {prefix} needs: {', '.join(required)}")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _coerce(f"{prefix}.{name}", raw[name], hints[name])
    return cls(**kwargs)


def _choice(key: str, value: str, allowed: typing.Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def _positive(key: str, value: float, *, zero_ok: bool = False) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{key}={value!r} must be {bound}")


def _positives(section: str, obj: Any, *names: str, zero_ok: bool = False) -> None:
    for name in names:
        _positive(f"{section}.{name}", getattr(obj, name), zero_ok=zero_ok)


def from_mapping(raw: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from a plain (resolved) mapping, e.g. Hydra's cfg."""
    raw = {k: v for k, v in raw.items() if k != "hydra"}
    sections = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}; top-level keys are: {', '.join(sorted(sections))}")

    model_raw = raw.get("model", {})
    if not isinstance(model_raw, Mapping):
        raise ConfigError(f"model={model_raw!r} must be a group of keys; e.g. model=gpt or model.dim=256")
    model_name = model_raw.get("name", "mlp")
    _choice("model", model_name, MODEL_SCHEMAS)
    cfg = TrainConfig(
        model=_build(MODEL_SCHEMAS[model_name], model_raw, "model"),
        data=_build(DataConfig, raw.get("data", {}), "data"),
        optim=_build(OptimConfig, raw.get("optim", {}), "optim"),
        comm=_build(CommConfig, raw.get("comm", {}), "comm"),
        trainer=_build(TrainerConfig, raw.get("trainer", {}), "trainer"),
        seed=_coerce("seed", raw.get("seed", 0), int),
        tensorboard=_coerce("tensorboard", raw.get("tensorboard", True), bool),
    )
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Reject values that are well-typed but meaningless. Pure: no I/O, no process group."""
    _MODEL_VALIDATORS[type(cfg.model)](cfg.model)
    _validate_data(cfg.data)
    _validate_optim(cfg.optim)
    _validate_comm(cfg.comm)
    _validate_trainer(cfg.trainer)


def _validate_mlp(m: MLPConfig) -> None:
    _positives("model", m, "hidden", "layers")


def _validate_convnet(m: ConvNetConfig) -> None:
    _positives("model", m, "width", "stages", "blocks_per_stage")
    _choice("model.norm", m.norm, ["group", "batch"])


def _validate_resnet(m: ResNetConfig) -> None:
    if m.depth not in (18, 34, 50):
        raise ConfigError(f"model.depth={m.depth} is not allowed; choose one of: 18, 34, 50")
    _positive("model.width", m.width)
    _choice("model.norm", m.norm, ["group", "batch"])
    _choice("model.stem", m.stem, ["auto", "imagenet", "cifar"])


def _validate_rnn(m: RNNConfig) -> None:
    _positives("model", m, "embed", "hidden", "layers")


def _validate_gpt(m: GPTConfig) -> None:
    _positives("model", m, "layers", "heads", "dim")
    if m.dim % m.heads:
        raise ConfigError(f"model.dim={m.dim} must be divisible by model.heads={m.heads}")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout={m.dropout} must be in [0, 1)")


def _validate_prnn(m: PRNNConfig) -> None:
    _positive("model.conv_layers", m.conv_layers, zero_ok=True)
    _positives("model", m, "conv_channels", "kernel", "hidden", "layers")
    if m.kernel % 2 == 0:
        raise ConfigError(f"model.kernel={m.kernel} must be odd (stride-1 'same' padding keeps one "
                          "output per frame only for odd kernels); e.g. 3 or 5")
    _choice("model.cell", m.cell, ["gru", "rnn"])
    _choice("model.nonlinearity", m.nonlinearity, ["relu", "tanh"])
    _choice("model.path", m.path, RNN_PATHS)


_MODEL_VALIDATORS = {
    MLPConfig: _validate_mlp,
    ConvNetConfig: _validate_convnet,
    ResNetConfig: _validate_resnet,
    RNNConfig: _validate_rnn,
    GPTConfig: _validate_gpt,
    PRNNConfig: _validate_prnn,
}


def _validate_data(d: DataConfig) -> None:
    _choice("data", d.name, ["synthetic", "digits", "chars", "speech"])
    _positives("data", d, "batch_size", "samples", "image_size", "channels", "seq_len", "features",
               "min_segment")
    _positive("data.noise", d.noise, zero_ok=True)
    if d.max_segment < d.min_segment:
        raise ConfigError(f"data.max_segment={d.max_segment} must be >= data.min_segment={d.min_segment}")
    if d.num_classes < 2:
        raise ConfigError(f"data.num_classes={d.num_classes} must be >= 2")
    if d.vocab_size < 2:
        raise ConfigError(f"data.vocab_size={d.vocab_size} must be >= 2")


def _validate_optim(o: OptimConfig) -> None:
    _choice("optim", o.name, ["adamw", "sgd"])
    _positive("optim.lr", o.lr)
    _positives("optim", o, "weight_decay", "momentum", "warmup_steps", "grad_clip", zero_ok=True)
    for key in ("beta1", "beta2"):
        if not 0.0 <= getattr(o, key) < 1.0:
            raise ConfigError(f"optim.{key}={getattr(o, key)} must be in [0, 1)")
    _choice("optim.schedule", o.schedule, ["constant", "cosine", "linear"])
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")


def _validate_comm(c: CommConfig) -> None:
    _choice("comm.engine", c.engine, ["ddtrain", "torch_ddp"])
    _positives("comm", c, "bucket_mb", "first_bucket_mb", "timeout_s")
    _positive("comm.verify_every", c.verify_every, zero_ok=True)
    _choice("comm.dtype", c.dtype, ["fp32", "bf16", "fp16"])
    _choice("comm.pack", c.pack, ["auto", "triton", "torch"])
    _choice("comm.backend", c.backend, ["auto", "nccl", "gloo"])


def _validate_trainer(t: TrainerConfig) -> None:
    _positives("trainer", t, "steps", "grad_accum", "log_every", "ckpt_keep")
    _positives("trainer", t, "threads", "ckpt_every", "ckpt_every_min", zero_ok=True)
    _choice("trainer.precision", t.precision, ["fp32", "bf16"])
    _choice("trainer.device", t.device, ["auto", "cpu", "cuda"])
    if not t.resume:
        raise ConfigError("trainer.resume='' is empty; use auto, never, or the path of a checkpoint "
                          "file or directory")
    _choice("trainer.on_nonfinite", t.on_nonfinite, ["stop", "skip"])


def to_flat_dict(cfg: TrainConfig) -> dict[str, Any]:
    """``{"model.name": "gpt", ...}``: for TensorBoard hparams and run records."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(v):
                walk(v, key + ".")
            else:
                # Scalars only (TensorBoard's hparams table takes nothing else): a list is
                # joined, an unset value is "null", as it is spelled in an override.
                out[key] = ",".join(v) if isinstance(v, tuple) else "null" if v is None else v

    walk(cfg, "")
    return out

