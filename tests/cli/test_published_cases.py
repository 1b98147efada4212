"""Published data-parallel scaling results, predicted through ddtrain-scale as a user types it,
with the default device model; docs/validation.md holds exactly what this run prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ddtrain.scaling.published import CASES, inputs_table

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    out = tmp_path_factory.mktemp("published")
    proc = subprocess.run([sys.executable, "-m", "ddtrain.scaling.published", "--json", str(out / "f.json"),
                           "--keep", str(out / "studies")], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads((out / "f.json").read_text()), out / "studies"


def test_every_case_is_a_ddtrain_scale_command_on_the_roofline(published):
    _, figures, studies = published
    assert [f["case"] for f in figures] == [c.name for c in CASES]
    names = " ".join(c.name for c in CASES)
    assert "diamos2016" in names and names.count("horovod2018") == 3 and len(CASES) >= 7
    for f, case in zip(figures, CASES, strict=True):
        assert f["command"].startswith("ddtrain-scale scale.predict_only=true scale.world_sizes=[1] ")
        assert f["device_model"] == "roofline", f
        meta = json.loads((studies / case.name / "scaling.json").read_text())["meta"]
        assert meta["cluster"]["cv"] == 0.03 and meta["device_model"]["efficiency"]  # one table, one cv
        assert 0 < f["predicted_efficiency"] <= 1.0 and 0 < f["predicted_fraction"] < 1.0


def test_the_persistent_rnn_case_runs_its_recurrences_as_persistent_kernels(published):
    studies = published[2]
    meta = json.loads((studies / "diamos2016_prnn" / "scaling.json").read_text())["meta"]
    assert meta["device_model"]["persistent_recurrences_by_batch"] == {"4": "7 of 7"}
    assert meta["device_model"]["device"] == "titanx_maxwell fp32"


def test_the_validation_page_is_this_runs_table_and_names_every_input(published):
    stdout = published[0]
    page = (REPO / "docs" / "validation.md").read_text()
    assert stdout.strip() in page, "docs/validation.md is out of date: paste what this module prints"
    assert inputs_table(list(CASES)) in page
