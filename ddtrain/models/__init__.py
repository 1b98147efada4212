"""The model zoo, and the door for the user's own model (``custom.py``).

Each module here that defines ``ENTRY`` is one model: its config schema, its validation, the
input kind it reads and its builder (``ddtrain/registry.py`` finds them). The built-ins report
their training FLOPs per sample (``flops_per_sample()``); for a model without that method the
trainer counts them.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ddtrain.data.spec import DataSpec


def build_model(cfg: Any, spec: DataSpec) -> nn.Module:
    """The model ``cfg.name`` (``cfg`` is its ENTRY's schema) for samples shaped like ``spec``.
    Which data set may feed which model is checked once, when the config is validated."""
    from ddtrain.registry import model_entry

    return model_entry(cfg.name).build(cfg, spec)


__all__ = ["build_model"]
