"""This rank's batches of any map-style data set, in the exact order of ``sharding.py``.

``ShardLoader`` is what ``DistributedSampler`` plus ``DataLoader`` give, with two guarantees they
lack. The order is fixed by the global batch alone: N ranks with batch b together read, step by
step and sample by sample, what one rank reads with batch N*b, so a run may resume at another
world size. And a sample's random augmentation is fixed by (seed, stream position): each
``dataset[i]`` runs with torch's generator seeded for that sample, so worker count, resuming and
world size change nothing.

A step is a function of its number alone; the loader's only state is ``step``, the next one to
hand out. A data set that says it ``reads_whole_batches`` (ddtrain's in-memory sets) is read a
whole batch at a time through its ``batch(indices)``; any other is read one ``dataset[i]`` at a
time and collated.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, default_collate

from ddtrain.data.sharding import sample_indices

_MASK64 = (1 << 64) - 1
_STATE_KEYS = ("step", "seed", "dataset_len", "global_batch", "shuffle", "drop_last")
# What to keep equal when a saved state does not fit this loader.
_STATE_FIX = {
    "seed": "pass the saved seed",
    "dataset_len": "resume with the same data set",
    "global_batch": "keep world size x data.batch_size as saved (the world size alone may change)",
    "shuffle": "pass the saved shuffle",
    "drop_last": "pass the saved drop_last",
}


def _splitmix64(x: int) -> int:
    # Steele et al., "Fast splittable pseudorandom number generators" (OOPSLA 2014): a bijection on
    # 64-bit integers whose outputs for neighbouring inputs look unrelated.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, position: int) -> int:
    """The torch seed under which the sample at stream ``position`` is read.

    Mixed rather than added, so that seed s at position p+1 and seed s+1 at position p do not get
    the same augmentation.
    """
    return _splitmix64(_splitmix64(seed & _MASK64) ^ (position & _MASK64))


def worker_context() -> Any:
    """How DataLoader workers start: None (DataLoader's default, a fork of this process) on one
    process; a fork server's context once a process group exists.

    A group's communication threads enter the interpreter on their own: a Gloo worker that frees
    a finished collective's tensor whose Python object is gone needs the GIL, and a thread with no
    Python thread state first registers one under the interpreter's runtime lock. A fork at that
    moment hands the child a held lock that no thread of it will release, and CPython 3.8 to 3.11
    take it in the child before resetting it (python/cpython#112275): the worker hangs before it
    runs a line, and its rank waits for the batch for ever. The fork server is a fresh
    single-threaded interpreter, so its forks are safe; the price is that the data set and
    collate_fn must pickle, and a script must keep its work under ``if __name__ == "__main__":``
    (the fork server imports it, as spawn's children do).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    context = multiprocessing.get_context("forkserver")
    # The server imports these once; each worker forked from it then starts without importing
    # torch again (seconds per worker, on every validation pass).
    context.set_forkserver_preload(["__main__", "torch"])
    return context


def reads_whole_batches(dataset: Any) -> bool:
    """Does ``dataset`` make a whole batch in one call, ``dataset.batch(indices) -> (x, y)``?
    It must say so (``reads_whole_batches = True``): other libraries' data sets have a ``batch``
    method that means something else."""
    return bool(getattr(dataset, "reads_whole_batches", False)) and callable(getattr(dataset, "batch", None))


class _Fetch:
    """One step's samples as one batch; runs in the calling process or in a DataLoader worker.

    A request is (stream position of the first sample, data-set indices). DataLoader hands a
    batch sampler's item to ``__getitems__`` whole, which is how a worker receives a request.
    """

    def __init__(self, dataset: Any, seed: int, collate_fn: Callable[[list], Any] | None):
        self.dataset = dataset
        self.seed = seed
        self.collate_fn = collate_fn or default_collate
        self.batched = reads_whole_batches(dataset)

    def __getitems__(self, request: tuple[int, Any]) -> Any:
        start, indices = request
        indices = torch.as_tensor(indices, dtype=torch.int64)
        if self.batched:
            return self.dataset.batch(indices)
        samples = []
        # One fork for the batch: the caller's generator comes back as it was, and the seed set
        # before each sample makes that sample's random draws its own. Only the CPU generator is
        # seeded (what fork_rng sets aside): torch.manual_seed would also seed every GPU's, at
        # about a hundred times the cost per sample.
        with torch.random.fork_rng(devices=[]):
            for position, index in enumerate(indices.tolist(), start):
                torch.default_generator.manual_seed(sample_seed(self.seed, position))
                samples.append(self.dataset[index])
        return self.collate_fn(samples)


class _StepRequests:
    """The batch sampler of the DataLoader path: this rank's request for each step in turn."""

    def __init__(self, loader: ShardLoader, first: int, last: int | None):
        self.loader, self.first, self.last = loader, first, last

    def __iter__(self) -> Iterator[tuple[int, list[int]]]:
        steps = itertools.count(self.first) if self.last is None else range(self.first, self.last)
        for step in steps:
            yield self.loader.position(step), self.loader.indices(step).tolist()


def _as_is(batch: Any) -> Any:
    # _Fetch already collated; DataLoader's own collation would wrap the batch a second time.
    return batch


def _pinned(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        # A data set may hand out tensors already on the GPU; only host memory can be pinned.
        return batch.pin_memory() if batch.device.type == "cpu" else batch
    if isinstance(batch, dict):
        return {key: _pinned(value) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*map(_pinned, batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(map(_pinned, batch))
    return batch


class ShardLoader:
    """This rank's share of every global batch of ``dataset``; see the module docstring.

    Step g's global batch holds G = world_size * batch_size samples, and rank r reads its r-th run
    of batch_size. ``drop_last=True``: epochs are aligned, as with DistributedSampler and
    DataLoader(drop_last=True): an epoch is n // G steps over that epoch's permutation, and its
    last n % G samples are not read. ``drop_last=False``: step g is the stream slice
    [g*G, (g+1)*G) of ``sharding.sample_indices``; a batch may straddle two epochs, and no sample
    is dropped or repeated within an epoch. ``shuffle=False`` reads every epoch as range(n).

    ``workers=0`` reads in the calling process; ``workers > 0`` reads through a DataLoader with
    that many processes (started as ``worker_context`` says), each loading ``prefetch`` batches
    ahead. Both give the same batches.
    """

    def __init__(self, dataset: Any, batch_size: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = True, workers: int = 0,
                 prefetch: int = 2, pin_memory: bool = False, start_step: int = 0,
                 collate_fn: Callable[[list], Any] | None = None):
        n = len(dataset)
        _check(n, batch_size, rank, world_size, workers, prefetch, start_step)
        if collate_fn is not None and reads_whole_batches(dataset):
            raise ValueError(f"collate_fn is given but {type(dataset).__name__} makes its own batches "
                             "(it has .batch); drop collate_fn or the batch method")
        self.dataset = dataset
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.workers = workers
        self.prefetch = prefetch
        # Pinning needs a GPU; without one DataLoader ignores the flag too.
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.step = start_step
        self._fetch = _Fetch(dataset, seed, collate_fn)

    @property
    def global_batch_size(self) -> int:
        return self.world_size * self.batch_size

    def __len__(self) -> int:
        """Steps per epoch: n // G with drop_last, else ceil(n / G)."""
        n, g = len(self.dataset), self.global_batch_size
        return n // g if self.drop_last else -(-n // g)

    def position(self, step: int) -> int:
        """Stream position of this rank's first sample at ``step``: epoch * n + offset in it."""
        if step < 0:
            raise ValueError(f"step={step} must be >= 0")
        offset = self.rank * self.batch_size
        if not self.drop_last:
            return step * self.global_batch_size + offset
        epoch, within = divmod(step, len(self))
        return epoch * len(self.dataset) + within * self.global_batch_size + offset

    def indices(self, step: int) -> torch.Tensor:
        """Data-set indices (int64) of this rank's share of global batch ``step``."""
        # With drop_last a step never reaches the epoch's end, so the stream slice is the
        # permutation slice perm_e[s*G + r*b : s*G + (r+1)*b].
        return sample_indices(self.position(step), self.batch_size, len(self.dataset), self.seed,
                              shuffle=self.shuffle)

    def batch_at(self, step: int) -> Any:
        """This rank's batch of ``step``, read in this process; the position does not move
        (for a look at one batch, e.g. to count a model's FLOPs on it)."""
        return self._fetch.__getitems__((self.position(step), self.indices(step)))

    def epoch(self, step: int) -> float:
        """Epochs completed before ``step``, for logs: steps / len(self) with drop_last, else
        samples read by all ranks / n."""
        if self.drop_last:
            return step / len(self)
        return step * self.global_batch_size / len(self.dataset)

    def __iter__(self) -> Iterator[Any]:
        """Batches from ``self.step`` to the end of its epoch (len(self) steps per epoch)."""
        epoch_end = (self.step // len(self) + 1) * len(self)
        return self._batches(self.step, epoch_end)

    def stream(self) -> Iterator[Any]:
        """Batches from ``self.step`` on, without end."""
        return self._batches(self.step, None)

    def _batches(self, first: int, last: int | None) -> Iterator[Any]:
        # ``self.step`` moves when a batch is handed out, not when it is loaded, so a checkpoint
        # taken while a batch is in use holds the step after it, however far workers read ahead.
        if self.workers == 0:
            steps = itertools.count(first) if last is None else range(first, last)
            for step in steps:
                batch = self.batch_at(step)
                self.step = step + 1
                yield _pinned(batch) if self.pin_memory else batch
            return
        loader = DataLoader(
            self._fetch, batch_sampler=_StepRequests(self, first, last), collate_fn=_as_is,
            num_workers=self.workers, prefetch_factor=self.prefetch, pin_memory=self.pin_memory,
            multiprocessing_context=worker_context(),
            # DataLoader draws its workers' base seed from this generator, not from the caller's.
            generator=torch.Generator().manual_seed(self.seed),
        )
        batches = iter(loader)
        try:
            for step, batch in enumerate(batches, first):
                self.step = step + 1
                yield batch
        finally:
            # Stops the workers when the caller leaves the loop early, without waiting for the
            # garbage collector (a held traceback keeps this frame, and so the workers, alive).
            batches._shutdown_workers()

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: the next step, and what makes a step mean the same samples."""
        return {"step": self.step, "seed": self.seed, "dataset_len": len(self.dataset),
                "global_batch": self.global_batch_size, "shuffle": self.shuffle,
                "drop_last": self.drop_last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue at ``state["step"]``; refuse a state whose steps mean other samples here."""
        missing = [key for key in _STATE_KEYS if key not in state]
        if missing:
            raise ValueError(f"loader state lacks {', '.join(missing)}; pass a ShardLoader.state_dict()")
        mine = self.state_dict()
        for key, fix in _STATE_FIX.items():
            if state[key] != mine[key]:
                raise ValueError(f"loader state has {key}={state[key]} but this loader has "
                                 f"{key}={mine[key]}; {fix}")
        if state["step"] < 0:
            raise ValueError(f"loader state has step={state['step']}; it must be >= 0")
        self.step = state["step"]


def _check(n: int, batch_size: int, rank: int, world_size: int, workers: int, prefetch: int,
           start_step: int) -> None:
    if batch_size <= 0:
        raise ValueError(f"data.batch_size={batch_size} must be > 0")
    if world_size <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must be in [0, world_size={world_size}); "
                         "pass the rank and world size of ddtrain.init()")
    if n == 0:
        raise ValueError("the data set is empty (len 0); give the loader a data set with samples")
    if n < world_size * batch_size:
        # A smaller set would put one sample twice in a global batch (drop_last=False) or give
        # epochs of no steps (drop_last=True).
        raise ValueError(
            f"the data set has {n} samples, fewer than one global batch of {world_size * batch_size} "
            f"(world_size {world_size} x data.batch_size {batch_size}); "
            "lower data.batch_size or use more data"
        )
    if workers < 0:
        raise ValueError(f"workers={workers} must be >= 0 (0 reads in this process)")
    if prefetch < 1:
        raise ValueError(f"prefetch={prefetch} must be >= 1 (batches each worker loads ahead)")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
