"""The fault benchmark's ``start`` launches a job once more only when Open MPI's daemon failed to
start before any rank ran, and never hides any other failure."""

from __future__ import annotations

import pytest

from tests.cli_helpers import load_launch_module

bench = load_launch_module("bench_cluster_faults")


class FakeJob:
    def __init__(self, started: bool, stderr: str):
        self.started, self.stderr, self.killed = started, stderr, False

    def pids(self, wait_s: float):
        if not self.started:
            raise RuntimeError(f"the ranks did not start: {self.stderr}")
        return {0: 1, 1: 2}

    def stderr_tail(self) -> str:
        return self.stderr

    def kill(self) -> None:
        self.killed = True


def launching(monkeypatch, jobs: list[FakeJob]) -> list[FakeJob]:
    queue = list(jobs)
    monkeypatch.setattr(bench, "_launch", lambda *args: queue.pop(0))
    return queue


def test_a_daemon_that_failed_to_start_is_launched_once_more(monkeypatch, tmp_path):
    failed, ok = FakeJob(False, bench.START_FAILURE), FakeJob(True, "")
    left = launching(monkeypatch, [failed, ok])
    assert bench.start(None, tmp_path, []) is ok
    assert failed.killed and not left


def test_any_other_failure_and_a_second_start_failure_are_raised(monkeypatch, tmp_path):
    launching(monkeypatch, [FakeJob(False, "ddtrain: error: bad override")])
    with pytest.raises(RuntimeError, match="bad override"):
        bench.start(None, tmp_path, [])
    left = launching(monkeypatch, [FakeJob(False, bench.START_FAILURE), FakeJob(False, bench.START_FAILURE),
                                   FakeJob(True, "")])
    with pytest.raises(RuntimeError, match="listener thread"):
        bench.start(None, tmp_path, [])
    assert len(left) == 1  # tried twice, not a third time
