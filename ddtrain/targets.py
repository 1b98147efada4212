"""A user's ``_target_``: found by its dotted path and called with its keys, as Hydra's
``hydra.utils.instantiate`` does, with every failure reported in one line that says the fix."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ddtrain.config import ConfigError
from ddtrain.errors import one_line


def resolve(key: str, path: str) -> Any:
    """The object at ``path`` ("package.module.Name"); ConfigError naming ``key`` if it is not there."""
    module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{key}={path!r} is not a dotted path; write package.module.Name")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"{key}={path}: cannot import {module_name} ({e}); PYTHONPATH must reach it on every "
            "node (or pip install the package there)"
        ) from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while importing
        raise ConfigError(f"{key}={path}: importing {module_name} failed: {one_line(e)}") from None
    if not hasattr(module, attr):
        raise ConfigError(f"{key}={path}: module {module_name} has no attribute {attr!r}")
    return getattr(module, attr)


def instantiate(key: str, path: str, kwargs: Mapping[str, Any]) -> Any:
    """``path(**kwargs)``, nested ``_target_`` keys instantiated too (Hydra's convention)."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    resolve(key, path)  # the clear message for an import failure, before Hydra's longer one
    try:
        return hydra_instantiate({"_target_": path, **kwargs})
    except InstantiationException as e:
        cause = e.__cause__ or e
        args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise ConfigError(f"{key}={path}({args}) failed: {one_line(cause)}") from None
