"""Which samples each rank reads at each micro-step: the functions that make data parallelism exact.

The data order is one infinite stream, the concatenation of per-epoch permutations of the data
set. Global micro-batch g is the stream slice [g*G, (g+1)*G) with G = world_size * batch_size, and
rank r reads the r-th run of batch_size positions inside it. Hence N ranks with per-rank batch b see
exactly the samples, in the same order, that one rank sees with batch N*b: the reduced gradient of
a data-parallel step can be compared with a single-process step sample for sample.

Nothing here holds a cursor. A batch is a function of the micro-step number alone, so resuming at
step k needs k and nothing else from the checkpoint.
"""

from __future__ import annotations

import functools
from typing import Protocol

import torch


@functools.lru_cache(maxsize=8)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    # A fresh generator per epoch (not one generator advanced epoch by epoch) lets any epoch be
    # produced directly, without replaying the earlier ones; the cache keeps the one or two epochs
    # a run is currently reading from being re-drawn at every micro-step.
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def sample_indices(position: int, count: int, n: int, seed: int, *, shuffle: bool = True) -> torch.Tensor:
    """Data-set indices at stream positions [position, position + count), as int64.

    The stream is epoch 0's permutation of range(n), then epoch 1's, and so on; epoch e is
    ``torch.randperm(n, generator=torch.Generator().manual_seed(seed + e))``, or range(n) itself
    when ``shuffle`` is False (then ``seed`` does not matter). The slice may span any number of
    epoch boundaries.
    """
    if n <= 0:
        raise ValueError(f"sample_indices: n={n} must be > 0 (the data set is empty)")
    if position < 0 or count < 0:
        raise ValueError(f"sample_indices: position={position} and count={count} must be >= 0")
    pieces = []
    end = position + count
    while position < end:
        epoch, offset = divmod(position, n)
        take = min(end - position, n - offset)
        if shuffle:
            pieces.append(_epoch_permutation(n, seed, epoch)[offset : offset + take])
        else:
            pieces.append(torch.arange(offset, offset + take, dtype=torch.int64))
        position += take
    # torch.cat always copies, so a caller that edits the result cannot corrupt the cache.
    return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.int64)


class _Source(Protocol):
    def __len__(self) -> int: ...

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class ShardedBatches:
    """This rank's share of every global micro-batch of an in-memory data set."""

    def __init__(self, dataset: _Source, batch_size: int, rank: int, world_size: int, seed: int):
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if batch_size <= 0:
            raise ValueError(f"data.batch_size={batch_size} must be > 0")
        global_batch = world_size * batch_size
        if len(dataset) < global_batch:
            # A smaller set would still stream, but one global batch would hold the same sample
            # twice, which silently breaks the "every sample once per epoch" reading of a step.
            raise ValueError(
                f"the data set has {len(dataset)} samples, fewer than one global batch of "
                f"{global_batch} (world_size {world_size} x data.batch_size {batch_size}); "
                "lower data.batch_size or use more data"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed

    @property
    def global_batch_size(self) -> int:
        return self.world_size * self.batch_size

    def position(self, micro_step: int) -> int:
        """Stream position of the first sample this rank reads at ``micro_step``."""
        if micro_step < 0:
            raise ValueError(f"micro_step={micro_step} must be >= 0")
        return micro_step * self.global_batch_size + self.rank * self.batch_size

    def indices(self, micro_step: int) -> torch.Tensor:
        """Data-set indices of this rank's slice of global micro-batch ``micro_step``."""
        return sample_indices(self.position(micro_step), self.batch_size, len(self.dataset), self.seed)

    def epoch(self, micro_step: int) -> float:
        """Epochs of the whole data set consumed (by all ranks) before ``micro_step``; for logs."""
        return micro_step * self.global_batch_size / len(self.dataset)

    def get(self, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) of this rank's slice of global micro-batch ``micro_step``; on the CPU."""
        return self.dataset.batch(self.indices(micro_step))
