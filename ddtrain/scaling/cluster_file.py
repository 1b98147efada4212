"""A cluster description written from a study's own calibration (``scale.write_cluster``).

What a measured study learned of the nodes it ran on, in the form of a ``configs/cluster/``
preset: the all-reduce's bus bandwidth and latency inside a node and across nodes, the workers
per node, the measured jitter, and where every figure came from, in comments. Copy it to
``configs/cluster/`` (then ``cluster=NAME``) or pass it as ``scale.cluster_file``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ddtrain.scaling.model import Cluster


def cluster_yaml(cluster: Cluster, *, name: str, device: str, cv: float | None, provenance: str,
                 inside_measured: bool) -> str:
    """The preset's text. ``device``: the workers' peak-table key, or "" for the machine a
    study runs on (a CPU), whose jitter a study measures itself, so ``cv`` is then left null."""
    g = cluster.gpus_per_node
    inside = ("measured: the all-reduce inside one node" if inside_measured
              else "the network's figures: the study measured no all-reduce inside one node")
    cv_given = bool(device) and cv is not None
    source = "measured by the study that wrote this file" if cv_given else ""
    cv_line = ("null  # measured by every study on this machine" if not cv_given
               else f"{cv:.4f}  # robust spread of one worker's step times in the writing study")
    lines = [
        f"# Written by ddtrain-scale from its own calibration: {provenance}",
        "# Bandwidths are all-reduce bus bandwidths (nccl-tests' busbw), latencies per ring step;",
        "# see configs/cluster/README.md for each key.",
        f"name: {name}",
        f"device: {json.dumps(device)}",
        f"gpus_per_node: {g}  # workers per node in the hostfile",
        f"intra_bw_GBps: {cluster.intra_bw_GBps:.6g}  # {inside}",
        f"intra_latency_us: {cluster.intra_latency_us:.6g}",
        f"inter_bw_GBps: {cluster.inter_bw_GBps:.6g}  # measured: the all-reduce across every worker",
        f"inter_latency_us: {cluster.inter_latency_us:.6g}",
        f"algorithm: {cluster.algorithm}",
        f"overhead_us: {cluster.overhead_us:g}",
        f"cv: {cv_line}",
        f"cv_source: {json.dumps(source)}",
        f"node_slowdown: {cluster.node_slowdown:.4g}  # measured: one worker's compute with its node full",
        f"optimizer_slowdown: {cluster.optimizer_slowdown:.4g}  # measured: its optimizer step, the same way",
        f"description: {json.dumps(cluster.description)}",
    ]
    return "\n".join(lines) + "\n"


def write_cluster_file(path: Path, text: str) -> Path:
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
