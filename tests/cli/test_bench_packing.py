"""launch/bench_packing.py's plumbing, on CPU: the GPU numbers themselves come from a GPU run."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

from tests.cli_helpers import run_launch_script

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "bench_packing.py"
pytest.importorskip("triton", reason="Triton is not installed")


def run(*args, cwd):
    return run_launch_script("bench_packing.py", *args, cwd=cwd)


def test_smoke_run_prints_and_writes_every_column(tmp_path):
    out = tmp_path / "packing.json"
    proc = run("--interpret-smoke", "--dtype", "fp32,bf16", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    header_line = next(line for line in proc.stdout.splitlines() if line.startswith("| tensors |"))
    for column in ("pack_gpu_GBps", "per_tensor_gpu_GBps", "copy_gpu_GBps", "gpu_pack_vs_copy",
                   "gpu_pack_vs_per_tensor", "loop_pack_vs_copy", "loop_pack_vs_per_tensor", "same_bits"):
        assert f"| {column} |" in header_line
    command = "command: python launch/bench_packing.py --interpret-smoke"
    for prefix in ("device: ", "torch ", command, "date: "):
        assert any(line.startswith(prefix) for line in proc.stdout.splitlines()), prefix
    data = json.loads(out.read_text())
    assert [(r["src"], r["buf"]) for r in data["rows"]] == [("fp32", "fp32"), ("fp32", "bf16")]
    for row in data["rows"]:
        assert row["same_bits"] is True  # the kernel's buffer equals the per-tensor copies'
        assert row["tensors"] >= 12 and row["smallest"] == 1  # the odd tiny tensors are there
        for method in ("pack", "per_tensor", "copy"):
            for mode in ("gpu", "loop"):
                assert row[f"{method}_{mode}_GBps"] > 0
        assert row["gpu_pack_vs_copy"] == pytest.approx(row["pack_gpu_GBps"] / row["copy_gpu_GBps"])
        assert row["gpu_pack_vs_per_tensor"] == pytest.approx(row["per_tensor_gpu_us"] / row["pack_gpu_us"])


@pytest.mark.parametrize("k", [100, 400])
def test_buckets_have_k_tensors_of_mixed_sizes_totalling_the_target(k):
    bucket_sizes = runpy.run_path(str(SCRIPT))["bucket_sizes"]
    sizes = bucket_sizes(k, 25.0, 2, 4, seed=0)
    assert len(sizes) == k
    assert sorted(sizes)[:2] == [1, 10]  # the odd ones
    assert sum(sizes) * 4 == pytest.approx(25 * 2**20, rel=0.05)
    assert max(sizes) > 100 * min(s for s in sizes if s >= 64)  # really mixed
