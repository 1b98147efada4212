"""``data=custom``: the user's own map-style Dataset, named by ``data._target_``.

``data._target_=mypkg.data.make_train_set +data.root=/scratch/x`` calls
``mypkg.data.make_train_set(root="/scratch/x")`` (``hydra.utils.instantiate``'s convention; a Dataset
class works the same way). It must return a map-style Dataset (``__len__`` and ``__getitem__``) of
``(input, target)`` pairs that ``torch.utils.data.default_collate`` can batch.
``data.val_target`` names the validation set's maker, called with the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ddtrain.config import ConfigError, DataConfig
from ddtrain.registry import ANY, DataEntry
from ddtrain.targets import instantiate, resolve


@dataclass(frozen=True)
class CustomData(DataConfig):
    name: str = "custom"
    target: str | None = None  # spelled data._target_
    val_target: str | None = None  # the validation set's maker; None: no validation set
    kwargs: dict = field(default_factory=dict)  # every other key: keyword arguments of both
    ALIASES: ClassVar[dict[str, str]] = {"_target_": "target"}
    EXTRA: ClassVar[str] = "kwargs"


def validate(d: CustomData) -> None:
    if not d.target:
        raise ConfigError("data=custom needs data._target_=package.module.make_dataset (a function or "
                          "Dataset class giving a map-style Dataset of (input, target)); its other "
                          "keys are keyword arguments, e.g. +data.root=/path")
    for key, path in (("data._target_", d.target), ("data.val_target", d.val_target)):
        if path is not None and not callable(resolve(key, path)):
            raise ConfigError(f"{key}={path} is not callable; name a function or a Dataset class")


def _checked(key: str, path: str, made: Any) -> Any:
    from torch.utils.data import IterableDataset

    if isinstance(made, IterableDataset) or not (hasattr(made, "__len__") and hasattr(made, "__getitem__")):
        raise ConfigError(f"{key}={path} gave a {type(made).__name__}, not a map-style Dataset; "
                          "return an object with __len__ and __getitem__ (a torch.utils.data.Dataset)")
    if len(made) == 0:
        raise ConfigError(f"{key}={path} gave an empty data set; check the keys passed to it")
    return made


def build(d: CustomData, kind: str, seed: int, split: str) -> Any:
    key, path = ("data._target_", d.target) if split == "train" else ("data.val_target", d.val_target)
    if path is None:
        return None
    return _checked(key, path, instantiate(key, path, d.kwargs))


ENTRY = DataEntry(name="custom", schema=CustomData, kinds=(ANY,), build=build, validate=validate,
                  has_val=lambda d: d.val_target is not None)
