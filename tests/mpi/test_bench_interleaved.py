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
