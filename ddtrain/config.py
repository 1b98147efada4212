"""Typed run configuration and its validation.

Hydra composes plain YAML groups (``configs/``); this module turns the composed tree into frozen
dataclasses and rejects bad values with one line that names the key, the value and what is
allowed. It runs before any process group exists, so a typo never costs a cluster allocation.
Each component receives only its own section (``cfg.model``, ``cfg.comm`` ...).

The sections shared by every run are defined here; a model's and a data set's keys are defined
beside their code, in the ``ENTRY`` of their module (``ddtrain/registry.py``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line naming key, value and fix."""


# --------------------------------------------------------------------------- the rest
@dataclass(frozen=True)
class DataConfig:
    """The keys every data set takes; each data set's schema (its ``ENTRY``) adds its own."""

    name: str = "synthetic"
    batch_size: int = 32  # per rank; the global batch is world_size * batch_size
    # Loader processes per rank; None: 0 for data held in memory, else a share of the cores.
    workers: int | None = None
    prefetch: int = 2  # batches each loader process prepares ahead


@dataclass(frozen=True)
class LossConfig:
    """``loss._target_``: a callable(output, target) -> scalar; None: cross-entropy."""

    target: str | None = None
    kwargs: dict = field(default_factory=dict)  # the extra keys, passed to the target
    ALIASES: ClassVar[dict[str, str]] = {"_target_": "target"}
    EXTRA: ClassVar[str] = "kwargs"


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
    # none | optimizer (ZeRO-1: optimizer state split across ranks) | gradients (ZeRO-2: gradients
    # reduce-scattered, and the optimizer state split); ddtrain/comm/sharded.py
    shard: str = "none"


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
    eval_every: int = 0  # a validation pass every K steps (and after the last); 0: none
    # torch.compile each block of the model (ddtrain/compile.py); the first step compiles and is
    # left out of throughput.
    compile: bool = False


def _default_model() -> Any:
    from ddtrain.models.mlp import MLPConfig

    return MLPConfig()


def _default_data() -> Any:
    from ddtrain.data.synthetic import SyntheticData

    return SyntheticData()


@dataclass(frozen=True)
class TrainConfig:
    model: Any = field(default_factory=_default_model)  # the schema of the model's ENTRY
    data: Any = field(default_factory=_default_data)  # a DataConfig subclass: the data set's ENTRY
    loss: LossConfig = field(default_factory=LossConfig)
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
    if dataclasses.is_dataclass(typ):  # a nested group of keys, e.g. scale.given.step_time_s
        return build_section(typ, value if value is not None else {}, key)
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


def build_section(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    """``cls`` from the keys under ``prefix``, each checked against its annotated type.

    A schema may rename keys (``ALIASES``: Hydra's ``_target_`` is the field ``target``) and may
    take any other key into one dict field (``EXTRA``): the keyword arguments of a user's class.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix}={raw!r} must be a group of keys")
    aliases: dict[str, str] = getattr(cls, "ALIASES", {})
    extra_field: str | None = getattr(cls, "EXTRA", None)
    raw = {aliases.get(k, k): v for k, v in raw.items()}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != extra_field]
    unknown = sorted(set(raw) - set(names))
    if unknown and extra_field is None:
        spelled = [next((a for a, n in aliases.items() if n == name), name) for name in names]
        raise ConfigError(
            f"unknown key {prefix}.{unknown[0]}; {prefix} takes: {', '.join(spelled)}"
        )
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in raw]
    if missing:
        raise ConfigError(f"{prefix}.{missing[0]} is missing; {prefix} needs: {', '.join(required)}")
    kwargs: dict[str, Any] = {n: _coerce(f"{prefix}.{n}", raw[n], hints[n]) for n in names if n in raw}
    if extra_field is not None:
        kwargs[extra_field] = {k: raw[k] for k in unknown}
    return cls(**kwargs)


def check_choice(key: str, value: str, allowed: typing.Iterable[str]) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(allowed)}")


def check_positive(key: str, value: float, *, zero_ok: bool = False) -> None:
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if value < 0 or (value == 0 and not zero_ok):
        bound = ">= 0" if zero_ok else "> 0"
        raise ConfigError(f"{key}={value!r} must be {bound}")


def check_positives(section: str, obj: Any, *names: str, zero_ok: bool = False) -> None:
    for name in names:
        check_positive(f"{section}.{name}", getattr(obj, name), zero_ok=zero_ok)


def _group(raw: Mapping[str, Any], key: str, example: str) -> Mapping[str, Any]:
    section = raw.get(key, {})
    if not isinstance(section, Mapping):
        raise ConfigError(f"{key}={section!r} must be a group of keys; e.g. {example}")
    return section


def from_mapping(raw: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a TrainConfig from a plain (resolved) mapping, e.g. Hydra's cfg."""
    from ddtrain import registry

    raw = {k: v for k, v in raw.items() if k != "hydra"}
    sections = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(raw) - sections)
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}; top-level keys are: {', '.join(sorted(sections))}")

    model_raw = _group(raw, "model", "model=gpt or model.dim=256")
    data_raw = _group(raw, "data", "data=chars or data.batch_size=8")
    model = registry.model_entry(str(model_raw.get("name", "mlp")))
    data = registry.data_entry(str(data_raw.get("name", "synthetic")))
    cfg = TrainConfig(
        model=build_section(model.schema, model_raw, "model"),
        data=build_section(data.schema, data_raw, "data"),
        loss=build_section(LossConfig, raw.get("loss", {}), "loss"),
        optim=build_section(OptimConfig, raw.get("optim", {}), "optim"),
        comm=build_section(CommConfig, raw.get("comm", {}), "comm"),
        trainer=build_section(TrainerConfig, raw.get("trainer", {}), "trainer"),
        seed=_coerce("seed", raw.get("seed", 0), int),
        tensorboard=_coerce("tensorboard", raw.get("tensorboard", True), bool),
    )
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Reject values that are well-typed but meaningless, and a data set that cannot feed the
    model. No process group and no data is read; a user's ``_target_`` is imported to check it."""
    from ddtrain import registry

    model = registry.model_entry(cfg.model.name)
    data = registry.data_entry(cfg.data.name)
    model.validate(cfg.model)
    _validate_data(cfg.data)
    data.validate(cfg.data)
    registry.input_kind(cfg.model.name, cfg.data.name)
    _validate_loss(cfg.loss)
    _validate_optim(cfg.optim)
    _validate_comm(cfg.comm)
    _validate_trainer(cfg.trainer)
    if cfg.trainer.eval_every and not data.has_val(cfg.data):
        raise ConfigError(
            f"trainer.eval_every={cfg.trainer.eval_every} needs a validation set, and data={cfg.data.name} "
            "has none here; give data.val_path (data=tokens), data.val_root (data=images) or "
            "data.val_target (data=custom), or set trainer.eval_every=0"
        )


def _validate_data(d: DataConfig) -> None:
    check_positive("data.batch_size", d.batch_size)
    if d.workers is not None:
        check_positive("data.workers", d.workers, zero_ok=True)
    check_positive("data.prefetch", d.prefetch)


def _validate_loss(loss: LossConfig) -> None:
    if loss.target is not None:
        from ddtrain.targets import resolve

        resolve("loss._target_", loss.target)
    elif loss.kwargs:
        first = next(iter(loss.kwargs))
        raise ConfigError(f"loss.{first} is set but loss._target_ is not; cross-entropy, the default "
                          "loss, takes no keys")


def _validate_optim(o: OptimConfig) -> None:
    check_choice("optim", o.name, ["adamw", "sgd"])
    check_positive("optim.lr", o.lr)
    check_positives("optim", o, "weight_decay", "momentum", "warmup_steps", "grad_clip", zero_ok=True)
    for key in ("beta1", "beta2"):
        if not 0.0 <= getattr(o, key) < 1.0:
            raise ConfigError(f"optim.{key}={getattr(o, key)} must be in [0, 1)")
    check_choice("optim.schedule", o.schedule, ["constant", "cosine", "linear"])
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise ConfigError(f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")


def _validate_comm(c: CommConfig) -> None:
    check_choice("comm.engine", c.engine, ["ddtrain", "torch_ddp"])
    check_positives("comm", c, "bucket_mb", "first_bucket_mb", "timeout_s")
    check_positive("comm.verify_every", c.verify_every, zero_ok=True)
    check_choice("comm.dtype", c.dtype, ["fp32", "bf16", "fp16"])
    check_choice("comm.pack", c.pack, ["auto", "triton", "torch"])
    check_choice("comm.backend", c.backend, ["auto", "nccl", "gloo"])
    check_choice("comm.shard", c.shard, ["none", "optimizer", "gradients"])
    if c.shard != "none" and c.engine != "ddtrain":
        raise ConfigError(f"comm.shard={c.shard} is ddtrain's reducer's; comm.engine={c.engine} does not "
                          "shard. Fix: comm.engine=ddtrain, or comm.shard=none")


def _validate_trainer(t: TrainerConfig) -> None:
    check_positives("trainer", t, "steps", "grad_accum", "log_every", "ckpt_keep")
    check_positives("trainer", t, "threads", "ckpt_every", "ckpt_every_min", zero_ok=True)
    check_choice("trainer.precision", t.precision, ["fp32", "bf16"])
    check_choice("trainer.device", t.device, ["auto", "cpu", "cuda"])
    if not t.resume:
        raise ConfigError("trainer.resume='' is empty; use auto, never, or the path of a checkpoint "
                          "file or directory")
    check_choice("trainer.on_nonfinite", t.on_nonfinite, ["stop", "skip"])
    check_positive("trainer.eval_every", t.eval_every, zero_ok=True)


def to_mapping(obj: Any) -> dict[str, Any]:
    """``obj`` (a TrainConfig or one section) as the plain mapping ``from_mapping`` reads back:
    keys spelled as in an override (``_target_``), a user's extra keys at their own names."""
    out: dict[str, Any] = {}
    spelled = {n: a for a, n in getattr(obj, "ALIASES", {}).items()}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.name == getattr(obj, "EXTRA", None):
            out.update(v)
        elif dataclasses.is_dataclass(v):
            out[f.name] = to_mapping(v)
        else:
            out[spelled.get(f.name, f.name)] = list(v) if isinstance(v, tuple) else v
    return out


def to_flat_dict(cfg: TrainConfig) -> dict[str, Any]:
    """``{"model.name": "gpt", ...}``: for TensorBoard hparams and run records. Keys are spelled
    as in an override (``model._target_``, and a user's extra keys under their own names)."""
    out: dict[str, Any] = {}

    def scalar(v: Any) -> Any:
        # Scalars only (TensorBoard's hparams table takes nothing else): a list is joined, an
        # unset value is "null", as it is spelled in an override; anything nested is JSON.
        if isinstance(v, tuple):
            return ",".join(map(str, v))
        if v is None:
            return "null"
        if isinstance(v, (list, dict)):
            return json.dumps(v, sort_keys=True)
        return v

    def walk(obj: Any, prefix: str) -> None:
        spelled = {n: a for a, n in getattr(obj, "ALIASES", {}).items()}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                walk(v, f"{prefix}{f.name}.")
            elif f.name == getattr(obj, "EXTRA", None):
                for k, item in sorted(v.items()):
                    out[f"{prefix}{k}"] = scalar(item)
            else:
                out[f"{prefix}{spelled.get(f.name, f.name)}"] = scalar(v)

    walk(cfg, "")
    return out
