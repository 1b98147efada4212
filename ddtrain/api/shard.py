"""``shard``: this process's loader of a data set, for the job ``init()`` joined."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ddtrain.api.context import current, init
from ddtrain.data.loader import ShardLoader


def shard(dataset: Any, batch_size: int, *, seed: int = 0, shuffle: bool = True, drop_last: bool = True,
          workers: int = 0, prefetch: int = 2, start_step: int = 0,
          collate_fn: Callable[[list], Any] | None = None) -> ShardLoader:
    """This rank's batches of ``dataset`` (any map-style data set), ``batch_size`` per rank.

    Every step reads one global batch of world_size x batch_size samples, and each rank reads its
    own run of ``batch_size`` inside it: N ranks with batch b read together, step by step and in
    order, exactly what one process reads with batch N*b. The order depends on ``seed``,
    ``shuffle``, ``drop_last`` and the global batch alone. ``drop_last=True`` reads n // global
    batch steps per epoch, each epoch a fresh permutation (as DistributedSampler does);
    ``drop_last=False`` reads every sample once per epoch, a step spanning two epochs at their
    seam. Random augmentation in ``dataset[i]`` draws from torch's generator seeded by ``seed``
    and the sample's place in the order, so it too is the same at any world size and worker count.

    ``for x, y in loader`` runs to the end of the current epoch; ``loader.stream()`` runs without
    end. ``loader.step`` is the next step to hand out: save ``loader.state_dict()`` in a checkpoint
    and resume with ``loader.load_state_dict(saved)`` (or ``start_step=``) to get exactly the
    batches that came next, at any world size with the same global batch.

    ``workers=0`` reads in this process; ``workers > 0`` reads in that many DataLoader processes,
    each ``prefetch`` batches ahead, with the same result; with several ranks they start from a
    fork server (``ddtrain.data.loader.worker_context`` says why), so ``dataset`` and
    ``collate_fn`` must pickle and the script's work must sit under ``if __name__ ==
    "__main__":``. Batches are pinned for a fast copy when the job runs on GPUs. The job is the
    one of ``ddtrain.init()``, which this calls if needed.
    """
    ctx = current() or init()
    return ShardLoader(dataset, batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=seed,
                       shuffle=shuffle, drop_last=drop_last, workers=workers, prefetch=prefetch,
                       pin_memory=ctx.device.type == "cuda", start_step=start_step, collate_fn=collate_fn)
