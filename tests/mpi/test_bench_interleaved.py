"""launch/bench_interleaved.py still runs (it drives train_step directly, so it breaks when the
step's signature changes) and prints its ratio table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli_helpers import REPO, clean_env, mpirun_path

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found")]


def test_interleaved_benchmark_smoke():
    argv = [mpirun_path(), "-np", "2", sys.executable, str(REPO / "launch" / "bench_interleaved.py"),
            "--steps", "6", "--warmup", "2", "model.hidden=16", "data.image_size=8", "data.batch_size=8"]
    proc = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 step pairs after 2 warm-up steps" in proc.stdout
    assert "| mlp |" in proc.stdout and "| ddtrain |" in proc.stdout and "| torch_ddp |" in proc.stdout


def test_too_few_steps_is_one_line():
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "bench_interleaved.py"), "--steps", "3"],
                          env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == ("bench_interleaved: --steps 3 must exceed --warmup 10 (the warm-up "
                                   "steps are not timed)")


def test_sharding_benchmark_smoke():
    """launch/bench_shard.py drives train_step for six variants (ddtrain's three shard modes, DDP,
    DDP + ZeroRedundancyOptimizer, FSDP2): each gets a time row and a memory row."""
    argv = [mpirun_path(), "-np", "2", sys.executable, str(REPO / "launch" / "bench_shard.py"),
            "--steps", "4", "--warmup", "2", "--block", "2", "--", "model=gpt", "model.layers=2",
            "model.dim=32", "model.heads=2", "data=chars", "data.seq_len=16", "data.batch_size=2",
            "optim=adamw", "trainer.progress=false"]
    proc = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for variant in ("ddtrain", "ddtrain-optimizer", "ddtrain-gradients", "ddp", "ddp-zero"):
        assert proc.stdout.count(f"| {variant} |") == 2, (variant, proc.stdout)
    # FSDP2 either ran (two rows) or says why not.
    assert proc.stdout.count("| fsdp2 |") == 2 or "fsdp2: not measured (" in proc.stdout
