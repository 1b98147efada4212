"""Loader processes of a rank whose process group is alive are not forks of the rank.

The group's Gloo threads take the interpreter's runtime lock now and then (to free a collective's
tensor); a worker forked at that moment hangs before it runs (``worker_context`` says how). The
moment cannot be forced from a test, so the test checks whose child each worker is.
"""

from __future__ import annotations

import multiprocessing
import os

import torch

from ddtrain.data.feed import val_batches
from ddtrain.data.loader import ShardLoader, worker_context
from tests.gloo.harness import run_ranks


class Parents(torch.utils.data.Dataset):
    """Sample i is (the reading process's parent pid, i)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.tensor(os.getppid()), i


def worker_parents(ctx) -> tuple[int, set[int], set[int]]:
    """(this rank's pid, the parents of its training loader's and validation pass's workers)."""
    # A rank that mpirun or torchrun starts forks by default (Linux, Python < 3.14); one that the
    # harness forks from its fork server would otherwise start its workers from a fork server too.
    multiprocessing.set_start_method("fork", force=True)
    rank, world = ctx.rank, ctx.world_size
    batches = ShardLoader(Parents(), 2, rank=rank, world_size=world, workers=1, prefetch=1).stream()
    train = {int(pid) for _ in range(2) for pid in next(batches)[0]}
    batches.close()  # stops the worker
    val = {int(pid) for x, _ in val_batches(Parents(), 2, rank=rank, world_size=world, workers=1, prefetch=1)
           for pid in x}
    return os.getpid(), train, val


def test_one_process_keeps_dataloaders_default():
    assert worker_context() is None  # no group, no threads to race with: no pickling asked of data sets


def test_a_rank_with_a_group_does_not_fork_its_workers():
    for pid, train, val in run_ranks(2, worker_parents):
        assert len(train) == len(val) == 1 and pid not in train | val, (pid, train, val)
