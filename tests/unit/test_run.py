"""CPU threads per rank: ranks on one node share its cores."""

from __future__ import annotations

import pytest

from ddtrain import run


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(run.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.mark.parametrize("requested, local_world_size", [(3, 1), (3, 8), (12, 4)])
def test_requested_threads_win(eight_cores, requested, local_world_size):
    assert run.cpu_threads(requested, local_world_size) == requested


@pytest.mark.parametrize(
    "local_world_size, expected",
    [(1, 8), (2, 4), (3, 2), (8, 1), (16, 1), (0, 8)],  # 8 // 3 rounds down; never below 1
)
def test_cores_are_split_across_local_ranks(eight_cores, local_world_size, expected):
    assert run.cpu_threads(0, local_world_size) == expected


def test_affinity_mask_counts_not_the_machine(monkeypatch):
    # Under mpirun --bind-to or a Slurm cgroup a rank sees only its own cores.
    monkeypatch.setattr(run.os, "sched_getaffinity", lambda pid: {4, 5}, raising=False)
    monkeypatch.setattr(run.os, "cpu_count", lambda: 64)
    assert run.cpu_threads(0, 1) == 2


def test_without_affinity_falls_back_to_cpu_count(monkeypatch):
    monkeypatch.delattr(run.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(run.os, "cpu_count", lambda: 6)
    assert run.cpu_threads(0, 4) == 1
    assert run.cpu_threads(0, 2) == 3
    monkeypatch.setattr(run.os, "cpu_count", lambda: None)  # unknown: one thread
    assert run.cpu_threads(0, 1) == 1
