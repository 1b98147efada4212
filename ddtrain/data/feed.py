"""From the config to the batches a rank trains and evaluates on."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from ddtrain.config import DataConfig
from ddtrain.data.loader import ShardLoader, reads_whole_batches, worker_context

# Loader processes per rank when data.workers is unset and samples are read from files: enough
# to keep decoding ahead of a step without starving the rank's own compute threads of cores.
_MAX_AUTO_WORKERS = 4


def loader_workers(cfg: DataConfig, dataset: Any, cpus: int, local_world_size: int) -> int:
    """``data.workers``, or its default: 0 for data in memory, else a share of this node's
    cores per rank (one core left to the rank itself), at most four."""
    if cfg.workers is not None:
        return cfg.workers
    if reads_whole_batches(dataset):  # a batch is one indexing operation: workers gain nothing
        return 0
    return max(1, min(_MAX_AUTO_WORKERS, cpus // max(1, local_world_size) - 1))


def train_loader(cfg: DataConfig, dataset: Any, *, rank: int, world_size: int, seed: int,
                 workers: int, pin_memory: bool) -> ShardLoader:
    """This rank's share of an endless stream of global micro-batches: every epoch a new order,
    batches run on across epoch boundaries, so no sample is dropped and none is repeated early."""
    return ShardLoader(dataset, cfg.batch_size, rank=rank, world_size=world_size, seed=seed,
                       shuffle=True, drop_last=False, workers=workers, prefetch=cfg.prefetch,
                       pin_memory=pin_memory)


def val_batches(dataset: Any, batch_size: int, *, rank: int, world_size: int, workers: int,
                prefetch: int) -> Iterator[Any]:
    """This rank's share of the validation set, each sample once across all ranks: rank r reads
    samples r, r+N, r+2N ... in order (shares differ by at most one sample)."""
    from torch.utils.data import DataLoader, Subset

    mine = list(range(rank, len(dataset), world_size))
    if reads_whole_batches(dataset):
        for start in range(0, len(mine), batch_size):
            yield dataset.batch(torch.tensor(mine[start:start + batch_size]))
        return
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, num_workers=workers,
                        prefetch_factor=prefetch if workers else None,
                        multiprocessing_context=worker_context() if workers else None)
    yield from loader


def to_device(obj: Any, device: torch.device) -> Any:
    """Tensors in ``obj`` (a tensor, or lists, tuples and dicts of them) moved to ``device``;
    non-blocking, so a pinned batch's copy overlaps the host's next work."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple takes its fields apart
        return type(obj)(*(to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device) for v in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj
