"""Data sets, and the sharding that gives each rank its exact share of every global batch.

Each module here that defines ``ENTRY`` is one data set (``ddtrain/registry.py`` finds them):
its config schema, the input kinds it can give, and its builder. ``build_dataset`` builds the
one ``data.name`` names; ``loader.ShardLoader`` turns it into this rank's batches.
"""

from __future__ import annotations

from typing import Any

from ddtrain.data.sharding import sample_indices
from ddtrain.data.spec import DataSpec

__all__ = ["DataSpec", "build_dataset", "sample_indices", "spec_of"]

# A user's data set says nothing of its shapes; the trainer needs only to know it is the user's.
_ANY_SPEC = DataSpec(kind="any")


def spec_of(dataset: Any) -> DataSpec:
    """The data set's DataSpec: the built-ins carry one (``.spec``), a user's set has none."""
    spec = getattr(dataset, "spec", None)
    return spec if isinstance(spec, DataSpec) else _ANY_SPEC


def build_dataset(cfg: Any, input_kind: str, seed: int, split: str = "train") -> Any:
    """The data set ``cfg.name`` (``cfg`` is its ENTRY's schema), giving samples of
    ``input_kind``; ``split="val"`` gives its validation set, or None when it has none.

    ``seed`` only matters for generated data. Raises ValueError, with one line naming the fix,
    for a missing or unreadable file, or fewer samples than one per-rank batch.
    """
    from ddtrain.registry import data_entry

    return data_entry(cfg.name).build(cfg, input_kind, seed, split)
