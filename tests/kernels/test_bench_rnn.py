"""launch/bench_rnn.py's plumbing, on CPU: the GPU numbers themselves come from a GPU run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "bench_rnn.py"
pytest.importorskip("triton", reason="Triton is not installed")


def run(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_smoke_run_writes_every_column_for_both_cells(tmp_path):
    out = tmp_path / "rnn.json"
    md = tmp_path / "rnn.md"
    proc = run("--interpret-smoke", "--dtypes", "fp32", "--out", str(out), "--markdown", str(md),
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert {r["cell"] for r in data["rows"]} == {"rnn", "gru"}
    for row in data["rows"]:
        assert row["path"] == "persistent"  # the kernel ran, not the reference loop
        for mode in ("fwd", "fwdbwd"):
            assert row[f"{mode}_us_per_step"] > 0 and row[f"{mode}_cudnn_us_per_step"] > 0
            assert row[f"{mode}_speedup"] == pytest.approx(
                row[f"{mode}_cudnn_us_per_step"] / row[f"{mode}_us_per_step"])
    assert any(h.startswith("command: python launch/bench_rnn.py") for h in data["header"])
    assert "| cell | dtype | hidden |" in md.read_text()


def test_without_a_gpu_it_says_so_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    proc = run("--cells", "rnn", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "needs a CUDA GPU" in proc.stderr


def test_a_bad_choice_is_rejected_by_name(tmp_path):
    proc = run("--cells", "lstm", cwd=tmp_path)
    assert proc.returncode == 2 and "lstm not in rnn,gru" in proc.stderr
