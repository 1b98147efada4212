"""A cluster calibrated on a hostfile's nodes: the two levels of links it is built from, and the
preset file a study writes from it, which reads back as the same cluster."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ddtrain.scaling.cluster_file import cluster_yaml
from ddtrain.scaling.config import parse_cluster, read_cluster_file
from ddtrain.scaling.model import allreduce_time
from ddtrain.scaling.study import local_cluster

LOCAL = parse_cluster(OmegaConf.to_container(OmegaConf.load(
    Path(__file__).resolve().parents[2] / "configs" / "cluster" / "local.yaml")))

ACROSS = {"alpha_s": 0.0024, "bus_bw_GBps": 0.0125}  # 4 workers over 100 Mbit/s links
INSIDE = {"alpha_s": 0.0002, "bus_bw_GBps": 0.9}  # 2 workers on one node


def test_across_nodes_the_network_fit_and_inside_one_node_the_nodes_own():
    c = local_cluster(LOCAL, {"fit": ACROSS, "inside": {"fit": INSIDE}}, 4, node_ranks=2)
    assert c.gpus_per_node == 2 and c.inter_bw_GBps == 0.0125 and c.intra_bw_GBps == 0.9
    # The ring formula gives back each fit at the size it was measured at.
    size = 8e6
    assert allreduce_time(size, 4, c) == pytest.approx(0.0024 + 1.5 * size / 0.0125e9)
    assert allreduce_time(size, 2, c) == pytest.approx(0.0002 + 1.0 * size / 0.9e9)
    # One worker per node: no links inside a node, the network's figures serve both levels.
    one = local_cluster(LOCAL, {"fit": ACROSS}, 2, node_ranks=1)
    assert one.gpus_per_node == 1 and one.intra_bw_GBps == one.inter_bw_GBps == 0.0125
    # No hostfile: one node holding every worker, as before.
    here = local_cluster(LOCAL, {"fit": ACROSS}, 4)
    assert here.gpus_per_node == LOCAL.gpus_per_node and here.intra_bw_GBps == 0.0125


def test_the_written_preset_reads_back_as_the_calibrated_cluster(tmp_path):
    c = dataclasses.replace(local_cluster(LOCAL, {"fit": ACROSS, "inside": {"fit": INSIDE}}, 4, node_ranks=2),
                            node_slowdown=1.8, optimizer_slowdown=1.6)
    text = cluster_yaml(c, name="lab", device="h100_sxm", cv=0.021, provenance="ddtrain-scale ... on node1",
                        inside_measured=True)
    (tmp_path / "lab.yaml").write_text(text)
    _, back = read_cluster_file("lab.yaml", tmp_path)
    assert back.name == "lab" and back.device == "h100_sxm" and back.cv == pytest.approx(0.021)
    for key in ("gpus_per_node", "intra_bw_GBps", "intra_latency_us", "inter_bw_GBps", "inter_latency_us",
                "node_slowdown", "optimizer_slowdown"):
        assert getattr(back, key) == pytest.approx(getattr(c, key), rel=1e-5), key
    # A CPU cluster (device "") leaves its jitter to the study that uses it.
    cpu = cluster_yaml(c, name="cpus", device="", cv=0.1, provenance="x", inside_measured=False)
    (tmp_path / "cpus.yaml").write_text(cpu)
    assert read_cluster_file("cpus.yaml", tmp_path)[1].cv is None
    assert "the network's figures: the study measured no all-reduce inside one node" in cpu
