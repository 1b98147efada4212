"""A scaling study across namespace nodes on shaped links: the all-reduce calibration sees the
link's rate, and the calibrated cluster is written as a preset that reads back."""

from __future__ import annotations

import json

import pytest

from ddtrain.launcher.mpirun import console_script
from ddtrain.scaling.config import read_cluster_file
from ddtrain.testing import netns
from tests.cluster.harness import run_on

SCALE = console_script("ddtrain-scale")
TINY = ["model=mlp", "model.hidden=256", "model.layers=2", "data=synthetic", "data.image_size=16",
        "data.batch_size=16", "optim=sgd", "scale.steps=4", "scale.warmup_steps=2", "scale.repeats=1",
        "scale.allreduce_max_mb=4", "scale.threads_per_rank=1", "tensorboard=false"]


def test_a_study_across_two_nodes_calibrates_the_link_and_writes_the_cluster(cluster_factory, tmp_path):
    rate = "100mbit"
    cluster = cluster_factory(2, rate=rate, slots=1)
    study, preset = tmp_path / "study", tmp_path / "nodes.yaml"
    args = [*TINY, "scale.world_sizes=[1,2]", f"scale.hostfile={cluster.hostfile}",
            f"scale.write_cluster={preset}", f"hydra.run.dir={study}"]
    proc = run_on(cluster, "node1", [SCALE, *args], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 workers fill 1+1 rank(s) per node" in proc.stderr
    report = json.loads((study / "scaling.json").read_text())
    meta = report["meta"]
    nominal = netns.rate_bits_per_s(rate) / 8 / 1e9  # GB/s
    # Two workers, one per node: every byte crosses the shaped link once each way, so the largest
    # message's bus bandwidth is the link's. (The fit over all sizes is not: the token bucket
    # passes small messages at burst speed, which can put the fitted bandwidth above the rate.)
    calibration = json.loads((study / "allreduce.json").read_text())
    largest = max(calibration["rows"], key=lambda r: r["size_bytes"])
    assert 0.7 * nominal < largest["busbw_GBps"] < 1.05 * nominal, (largest, nominal)
    busbw = meta["allreduce_fit"]["bus_bw_GBps"]
    rows = {(r["kind"], r["world_size"]) for r in report["rows"]}
    assert {("measured", 2), ("predicted", 2)} <= rows
    _, written = read_cluster_file(str(preset), tmp_path)
    assert written.name == "nodes" and written.gpus_per_node == 1 and written.device == ""
    assert written.inter_bw_GBps == pytest.approx(busbw, rel=1e-4)
    assert f"cluster written: {preset}" in proc.stderr
