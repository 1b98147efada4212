"""The models and data sets ``model=NAME`` and ``data=NAME`` can name: one entry each.

Every built-in is one Python file that defines ``ENTRY`` (its config schema, its validation,
the input kind it reads or gives, and its builder) beside one YAML file in ``configs/``; the
user's own model and data set enter through the same door as ``model=custom`` and
``data=custom``. Entries are found by scanning ``ddtrain.models`` and ``ddtrain.data`` for
modules with an ``ENTRY``, so adding a built-in edits no table.

The input kinds: "image" (float [C, H, W] and a class), "tokens" (int64 [T] ids and the next
ids), "frames" (float [T, F] and a class per frame), and "any" for the user's own model or data,
whose shapes ddtrain does not need to know.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ddtrain.config import ConfigError

ANY = "any"
_PLURAL = {"image": "images", "tokens": "tokens", "frames": "frames"}


def _no_check(_cfg: Any) -> None:
    return None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    schema: type  # the frozen dataclass of the model.* keys
    input_kind: str  # what it reads: image | tokens | frames | any
    build: Callable[[Any, Any], Any]  # (its config, DataSpec) -> nn.Module
    validate: Callable[[Any], None] = _no_check  # raises ConfigError; no I/O beyond imports


@dataclass(frozen=True)
class DataEntry:
    name: str
    schema: type  # a DataConfig subclass: the data.* keys
    kinds: tuple[str, ...]  # what it can give, preferred first
    build: Callable[..., Any]  # (its config, kind, seed, split) -> Dataset, or None: no such split
    validate: Callable[[Any], None] = _no_check
    has_val: Callable[[Any], bool] = lambda _cfg: False  # does it give a "val" split?


def _scan(package: str, kind: type) -> dict[str, Any]:
    pkg = importlib.import_module(package)
    found = {}
    for info in pkgutil.iter_modules(pkg.__path__):
        entry = getattr(importlib.import_module(f"{package}.{info.name}"), "ENTRY", None)
        if isinstance(entry, kind):
            found[entry.name] = entry
    return dict(sorted(found.items()))


@functools.cache
def models() -> dict[str, ModelEntry]:
    """Every model ``model=NAME`` can name, by name."""
    return _scan("ddtrain.models", ModelEntry)


@functools.cache
def datasets() -> dict[str, DataEntry]:
    """Every data set ``data=NAME`` can name, by name."""
    return _scan("ddtrain.data", DataEntry)


def model_entry(name: str) -> ModelEntry:
    table = models()
    if name not in table:
        raise ConfigError(f"model={name!r} is not allowed; choose one of: {', '.join(table)}")
    return table[name]


def data_entry(name: str) -> DataEntry:
    table = datasets()
    if name not in table:
        raise ConfigError(f"data={name!r} is not allowed; choose one of: {', '.join(table)}")
    return table[name]


def input_kind(model_name: str, data_name: str) -> str:
    """The kind of sample the data set builds for this model; raises ConfigError when the data
    set cannot give what the model reads. The one place the pairing is checked."""
    model, data = model_entry(model_name), data_entry(data_name)
    if model.input_kind == ANY:
        return data.kinds[0]
    if model.input_kind in data.kinds:
        return model.input_kind
    fits = [name for name, e in datasets().items() if model.input_kind in e.kinds]
    gives = "the user's own samples" if data.kinds == (ANY,) else _PLURAL[data.kinds[0]]
    raise ConfigError(
        f"data={data_name} gives {gives} but model needs {_PLURAL[model.input_kind]}; "
        f"use {' or '.join(f'data={name}' for name in fits)}, or model=custom"
    )
