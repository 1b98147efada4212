"""``model=custom``: the user's own nn.Module, named by ``model._target_``.

``model._target_=mypkg.nets.Net +model.width=256`` builds ``mypkg.nets.Net(width=256)``, following
``hydra.utils.instantiate``: the other keys are keyword arguments, and a key that holds a
``_target_`` of its own is built first. The target is a Module class or a function returning a
Module. It reads whatever its data set gives; its shapes are its own business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from ddtrain.config import ConfigError
from ddtrain.data.spec import DataSpec
from ddtrain.registry import ANY, ModelEntry
from ddtrain.targets import instantiate, resolve


@dataclass(frozen=True)
class CustomModelConfig:
    name: str = "custom"
    target: str | None = None  # spelled model._target_
    kwargs: dict = field(default_factory=dict)  # every other key: the target's keyword arguments
    ALIASES: ClassVar[dict[str, str]] = {"_target_": "target"}
    EXTRA: ClassVar[str] = "kwargs"


def validate(m: CustomModelConfig) -> None:
    if not m.target:
        raise ConfigError("model=custom needs model._target_=package.module.Class (an nn.Module class, "
                          "or a function returning one); its other keys are keyword arguments, e.g. "
                          "+model.width=256")
    target = resolve("model._target_", m.target)
    if isinstance(target, type) and not issubclass(target, nn.Module):
        raise ConfigError(f"model._target_={m.target} is a class but not a torch.nn.Module; name the "
                          "model class (or a function that returns one)")
    if not callable(target):
        raise ConfigError(f"model._target_={m.target} is a {type(target).__name__}, not a class or "
                          "function; name the model class (or a function that returns one)")


def build(m: CustomModelConfig, spec: DataSpec) -> nn.Module:
    model = instantiate("model._target_", m.target, m.kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={m.target} returned a {type(model).__name__}, not a "
                          "torch.nn.Module; return the model itself")
    return model


ENTRY = ModelEntry(name="custom", schema=CustomModelConfig, input_kind=ANY, build=build, validate=validate)
