"""``ddtrain-scale scale.cluster_file=PATH`` for real: a predict-only study on a cluster of the
user's own, and the one-line refusals before anything runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ddtrain.launcher.mpirun import console_script
from tests.cli_helpers import run_cli

SCALE = console_script("ddtrain-scale")
PRESETS = Path(__file__).resolve().parents[2] / "configs" / "cluster"
SMALL = ["scale.predict_only=true", "scale.predict_to=16", "model=convnet", "data=synthetic", "model.width=8",
         "data.image_size=16", "data.batch_size=64"]


def test_a_predict_only_study_models_the_users_cluster(tmp_path):
    mine = (PRESETS / "dgx_h100.yaml").read_text().replace("name: dgx_h100", "name: lab_h100")
    assert "name: lab_h100" in mine
    (tmp_path / "mine.yaml").write_text(mine)
    study = tmp_path / "study"
    # A relative path, with Hydra moving the job into its run directory: the file is still found
    # where ddtrain-scale was started.
    proc = run_cli([*SMALL, "scale.cluster_file=mine.yaml", "hydra.job.chdir=true", f"hydra.run.dir={study}"],
                   script=SCALE, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(study / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["world_size"]) for r in rows] == [1, 2, 4, 8, 16]
    assert {r["cluster"] for r in rows} == {"lab_h100"}
    meta = json.loads((study / "scaling.json").read_text())["meta"]
    assert meta["scale"]["cluster_file"] == str(tmp_path.resolve() / "mine.yaml")
    assert meta["cluster"]["name"] == "lab_h100"


@pytest.mark.parametrize(
    "override, message",
    [
        ("scale.cluster_file=nope.yaml", "scale.cluster_file=nope.yaml: {tmp}/nope.yaml does not exist"),
        ("cluster=/x/mine.yaml", "cluster=/x/mine.yaml is a file path, but cluster= takes a preset name"),
    ],
)
def test_a_bad_cluster_file_is_one_line_before_anything_runs(tmp_path, override, message):
    proc = run_cli([*SMALL, override, f"hydra.run.dir={tmp_path / 's'}"], script=SCALE, cwd=tmp_path,
                   timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddtrain: error: "), proc.stderr
    assert message.format(tmp=tmp_path.resolve()) in lines[0]
    assert not (tmp_path / "s").exists()
