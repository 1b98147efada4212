"""launch/bench_rnn.py's plumbing, on CPU: the GPU numbers themselves come from a GPU run."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_launch_script

pytest.importorskip("triton", reason="Triton is not installed")


def run(*args, cwd):
    return run_launch_script("bench_rnn.py", *args, cwd=cwd)


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
