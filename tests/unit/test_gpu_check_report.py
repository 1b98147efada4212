"""launch/gpu_check.py's report, from the files its steps write (faked here: no GPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "launch" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_the_report_tables_every_step_with_its_figures(tmp_path, monkeypatch):
    gc = _module()
    monkeypatch.setattr(gc, "peak_bf16", lambda: 989.4e12)
    steps = {s.name: s for s in gc.steps(tmp_path)}
    (tmp_path / "runs" / "gpt").mkdir(parents=True)
    (tmp_path / "runs" / "gpt" / "metrics.jsonl").write_text(
        json.dumps({"step": 40, "achieved_tflops": 494.7, "samples_per_s": 10.0, "step_time_s": 1.6}) + "\n")
    roof = tmp_path / "runs" / "roofline-gpt"
    roof.mkdir(parents=True)
    row = {"step_time_s": 0.1, "scaling_efficiency": 1.0, "fraction_of_peak": 0.4}
    (roof / "scaling.json").write_text(json.dumps({"rows": [
        {**row, "kind": "measured", "world_size": 1}, {**row, "kind": "predicted", "world_size": 1,
                                                        "step_time_s": 0.08}]}))
    gpt = steps["gpt bf16 one GPU"]
    assert "trainer.compile=true" in gpt.command
    gpt.result = {"status": "pass", "seconds": 30.0, **gc.figures(gpt, tmp_path)}
    assert gpt.result["MFU (of the dense bf16 datasheet peak)"] == 0.5
    roofline = steps["roofline gpt"]
    roofline.result = {"status": "pass", "seconds": 12.0, **gc.figures(roofline, tmp_path)}
    assert abs(roofline.result["predicted/measured step - 1"] + 0.2) < 1e-9
    late = steps["roofline prnn"]
    late.result = {"status": "skipped", "why": "10 s of the budget left"}
    gc.report([gpt, roofline, late], tmp_path, ["--budget-s", "60"])
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| gpt bf16 one GPU | pass  | 30.0 | achieved_tflops 494.7; " in md
    assert "MFU (of the dense bf16 datasheet peak) 0.5" in md
    assert "| roofline prnn | skipped 10 s of the budget left |" in md
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["name"] for s in saved["steps"]] == ["gpt bf16 one GPU", "roofline gpt", "roofline prnn"]
    assert saved["command"] == "bash launch/gpu_check.sh --budget-s 60"
