"""Clusters of network namespaces for tests: build one, run commands on its nodes, remove it.

Each cluster has a name of its own (the test process's id and a counter), so tests running in
parallel never share namespaces, and every cluster is removed when its fixture ends.
"""

from __future__ import annotations

import itertools
import os
import subprocess

import pytest

from ddtrain.testing import netns

_count = itertools.count()


def unavailable() -> str | None:
    """Why no cluster can be built here (the skip reason), or None."""
    try:
        netns.check_host()
    except netns.ClusterError as e:
        return str(e)
    return None


def build(nodes: int, *, rate: str = "none", slots: int = 1) -> netns.Cluster:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = netns.Cluster(f"ddtt{os.getpid()}x{next(_count)}", nodes, rate, netns.DEFAULT_SUBNET, slots)
    netns.up(cluster)
    return cluster


def run_on(cluster: netns.Cluster, node: str, argv: list[str], *, timeout: float = 300,
           env: dict[str, str] | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(netns.exec_argv(cluster, node, argv), env=netns.node_env(cluster, env),
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)

