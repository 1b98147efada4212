"""Data sets held whole in memory, and the sharding that gives each rank its exact share.

Every set here fits in host memory, so a batch is one indexing operation on two tensors: no
DataLoader, no worker processes, nothing whose timing or order could differ between ranks.
``build_dataset`` picks the set named by ``data.name`` and checks that it gives the kind of input
the model needs; ``ShardedBatches`` turns it into this rank's batch for any micro-step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddtrain.config import DataConfig
from ddtrain.data import chars, digits, speech, synthetic
from ddtrain.data.sharding import ShardedBatches, sample_indices
from ddtrain.data.spec import DataSpec

__all__ = ["DataSpec", "Dataset", "ShardedBatches", "build_dataset", "sample_indices"]

# The input kinds each data set can give.
_KINDS: dict[str, tuple[str, ...]] = {
    "synthetic": ("image", "tokens"),
    "digits": ("image",),
    "chars": ("tokens",),
    "speech": ("frames",),
}
_PLURAL = {"image": "images", "tokens": "tokens", "frames": "frames"}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Samples x[i], y[i] in CPU memory; ``spec`` says their shapes to the model builder."""

    x: torch.Tensor
    y: torch.Tensor
    spec: DataSpec
    vocab: str = ""  # chars only: the character of each token id, for decoding samples

    def __len__(self) -> int:
        return self.x.shape[0]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x[indices], y[indices]): new CPU tensors; moving them to the device is the caller's."""
        return self.x[indices], self.y[indices]


def _check_kind(name: str, input_kind: str) -> None:
    if input_kind not in _PLURAL:
        known = ", ".join(map(repr, _PLURAL))
        raise ValueError(f"input kind {input_kind!r} is not known; models need one of: {known}")
    if name not in _KINDS:
        raise ValueError(f"data={name!r} is not allowed; choose one of: {', '.join(_KINDS)}")
    gives = _KINDS[name]
    if input_kind not in gives:
        fits = sorted(other for other, kinds in _KINDS.items() if input_kind in kinds)
        raise ValueError(
            f"data={name} gives {_PLURAL[gives[0]]} but model needs {_PLURAL[input_kind]}; "
            f"use {' or '.join(f'data={other}' for other in fits)}"
        )


def build_dataset(cfg: DataConfig, input_kind: str, seed: int) -> Dataset:
    """The data set ``cfg.name`` as input of kind ``input_kind`` ("image" | "tokens" | "frames").

    ``seed`` only matters for generated data. Raises ValueError, with one line naming the fix,
    when the set cannot give that kind, a file in ``cfg.paths`` is missing, or the set holds
    fewer samples than one per-rank batch (the global-batch check is ShardedBatches').
    """
    # The kind check comes first so that a mismatch costs no file reading and no generation.
    _check_kind(cfg.name, input_kind)
    vocab = ""
    if cfg.name == "synthetic" and input_kind == "image":
        x, y, spec = synthetic.images(cfg, seed)
    elif cfg.name == "synthetic":
        x, y, spec = synthetic.tokens(cfg, seed)
    elif cfg.name == "digits":
        x, y, spec = digits.images()
    elif cfg.name == "speech":
        x, y, spec = speech.frames(cfg, seed)
    else:
        x, y, spec, vocab = chars.windows(cfg)
    dataset = Dataset(x=x, y=y, spec=spec, vocab=vocab)
    if len(dataset) < cfg.batch_size:
        more = {
            "synthetic": " or raise data.samples",
            "speech": " or raise data.samples",
            "digits": "",
            "chars": ", lower data.seq_len or give more text in data.paths",
        }[cfg.name]
        raise ValueError(
            f"data={cfg.name} has {len(dataset)} samples, fewer than one batch of "
            f"data.batch_size={cfg.batch_size}; lower data.batch_size{more}"
        )
    return dataset
