"""Which samples each rank reads at each micro-step: the functions that make data parallelism exact.

The data order is one infinite stream, the concatenation of per-epoch permutations of the data
set. Global micro-batch g is the stream slice [g*G, (g+1)*G) with G = world_size * batch_size, and
rank r reads the r-th run of batch_size positions inside it. Hence N ranks with per-rank batch b see
exactly the samples, in the same order, that one rank sees with batch N*b: the reduced gradient of
a data-parallel step can be compared with a single-process step sample for sample.

Nothing here holds a cursor. A batch is a function of the micro-step number alone, so resuming at
step k needs k and nothing else from the checkpoint. ``loader.ShardLoader`` reads batches in
this order (``drop_last=False``).
"""

from __future__ import annotations

import functools

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
