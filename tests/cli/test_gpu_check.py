"""launch/gpu_check.sh: its steps listed without a GPU, and one clear line where none is."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "launch" / "gpu_check.sh"


def test_the_dry_run_lists_every_step_with_its_command_and_limit(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = [line.split(". ", 1)[1].split(" (up to")[0] for line in proc.stdout.splitlines()
             if line[:3].strip().rstrip(".").isdigit()]
    assert names == ["environment", "ceilings", "pytest gpu", "bench_rnn fma", "bench_rnn dot",
                     "bench_packing", "gpt bf16 one GPU", "prnn persistent one GPU", "scale prnn to 128",
                     "scale gpt to 128", "roofline gpt", "roofline resnet50", "roofline prnn"]
    grid = "launch/bench_rnn.py --cells rnn,gru --dtypes fp16,bf16 --hidden 1024,2048 --batches 4"
    assert grid in proc.stdout
    assert "scale.device_model=roofline" in proc.stdout and "cluster=dgx_h100" in proc.stdout
    assert (f"writes {tmp_path}/gpu_check.md, {tmp_path}/gpu_check.json and {tmp_path}/gpu_check.tar.gz"
            in proc.stdout)
    # The GPT step leaves no weights or checkpoints behind (gigabytes at this size).
    assert "trainer.checkpoint=false trainer.save_model=false" in proc.stdout
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_without_a_gpu_it_stops_with_one_line_and_exit_2(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(tmp_path),
                               "CUDA_VISIBLE_DEVICES": ""},
                          cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: no CUDA GPU is visible"), proc.stderr
    assert not list(tmp_path.iterdir())


def test_only_picks_steps_by_their_first_words(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--only", "ceilings", "roofline"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = [line.split(". ", 1)[1].split(" (up to")[0] for line in proc.stdout.splitlines()
             if line[:3].strip().rstrip(".").isdigit()]
    assert names == ["ceilings", "roofline gpt", "roofline resnet50", "roofline prnn"]


def _gpu_check():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "launch" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = gpu_check  # its dataclasses look their module up there
    spec.loader.exec_module(gpu_check)
    return gpu_check


def test_a_studys_one_gpu_error_says_when_the_devices_differ(tmp_path):
    gpu_check = _gpu_check()
    rows = [{"kind": kind, "world_size": 1, "step_time_s": t, "scaling_efficiency": 1.0,
             "fraction_of_peak": 0.1} for kind, t in (("measured", 0.05), ("predicted", 0.06))]
    for run in ("scale-gpt", "roofline-gpt"):
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "scaling.json").write_text(json.dumps({"rows": rows}))
    cross = gpu_check.figures(gpu_check.Step("scale gpt to 128", [], 1, ""), tmp_path)
    same = gpu_check.figures(gpu_check.Step("roofline gpt", [], 1, ""), tmp_path)
    assert cross["predicted (cluster's GPU) / measured (this GPU) step - 1"] == pytest.approx(0.2)
    assert same["predicted/measured step - 1"] == pytest.approx(0.2)
    assert "predicted/measured step - 1" not in cross


def test_the_bundle_holds_every_small_file_and_leaves_out_large_ones(tmp_path):
    import tarfile

    gpu_check = _gpu_check()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "01-environment.log").write_text("nvidia-smi")
    (tmp_path / "runs" / "gpt").mkdir(parents=True)
    (tmp_path / "runs" / "gpt" / "metrics.jsonl").write_text("{}")
    (tmp_path / "runs" / "gpt" / "model.pt").write_bytes(b"0" * 4096)
    bundle = gpu_check.bundle(tmp_path, limit=1024)
    with tarfile.open(bundle) as tar:
        assert sorted(tar.getnames()) == ["logs/01-environment.log", "runs/gpt/metrics.jsonl"]
