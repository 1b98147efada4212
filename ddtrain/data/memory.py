"""A data set held whole in memory as two tensors: a batch is one indexing operation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ddtrain.data.spec import DataSpec


@dataclass(frozen=True, eq=False)
class InMemory:
    """Samples x[i], y[i] in CPU memory; ``spec`` says their shapes to the model builder."""

    x: torch.Tensor
    y: torch.Tensor
    spec: DataSpec
    vocab: str = ""  # chars only: the character of each token id, for decoding samples
    reads_whole_batches: ClassVar[bool] = True  # the loader calls batch(), not __getitem__ per sample

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x[indices], y[indices]): new CPU tensors; moving them to the device is the caller's.
        The loader takes a whole batch this way instead of sample by sample."""
        return self.x[indices], self.y[indices]


def at_least_one_batch(data: InMemory, name: str, batch_size: int, more: str) -> InMemory:
    """``data``, or a ValueError when it holds fewer samples than one per-rank batch
    (the global-batch check is the loader's); ``more`` says how to get more samples."""
    if len(data) < batch_size:
        raise ValueError(
            f"data={name} has {len(data)} samples, fewer than one batch of "
            f"data.batch_size={batch_size}; lower data.batch_size{more}"
        )
    return data
