"""The cluster itself, built and torn down as a user does from the command line: nodes reach
each other and nothing else, links carry their nominal rate, and nothing is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddtrain.testing import netns
from tests.cluster import harness

NETNS = [sys.executable, "-m", "ddtrain.testing.netns"]

# Node2 listens, node1 sends for 2 s; the receiver prints MB/s.
THROUGHPUT = """
import socket, sys, time
if sys.argv[1] == "listen":
    s = socket.create_server(("0.0.0.0", 5555)); c, _ = s.accept(); n, t0 = 0, time.perf_counter()
    while b := c.recv(1 << 20):
        n += len(b)
    print(n / (time.perf_counter() - t0) / 1e6)
else:
    c = socket.create_connection((sys.argv[2], 5555)); buf, t0 = b"x" * (1 << 20), time.perf_counter()
    while time.perf_counter() - t0 < 2:
        c.sendall(buf)
"""


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*NETNS, *args], capture_output=True, text=True, timeout=120, **kw)


def root_links() -> str:
    return subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def name():
    reason = harness.unavailable()
    if reason:
        pytest.skip(reason)
    name = f"ddtt{os.getpid()}cli"
    yield name
    netns.down(name)


def test_up_twice_exec_and_down_leave_the_machine_as_it_was(name):
    before = root_links()
    first = cli("--name", name, "up", "2", "--rate", "1gbit")
    again = cli("--name", name, "up", "2", "--rate", "1gbit")  # idempotent: rebuilt, same result
    assert first.returncode == again.returncode == 0, again.stderr
    hostfile = Path(again.stdout.strip().splitlines()[-1])
    assert hostfile.is_absolute() and hostfile.read_text() == "node1 slots=2\nnode2 slots=2\n"
    assert root_links() == before  # the switch and the cables live in namespaces of their own
    me = cli("--name", name, "exec", "node2", "sh", "-c", "hostname; getent hosts node1; echo $PATH",
             env={**os.environ, "PATH": f"/opt/marker:{os.environ['PATH']}"})
    assert me.returncode == 0, me.stderr
    host, node1, path = me.stdout.splitlines()
    assert host == "node2" and node1.split() == ["10.213.7.1", "node1"] and path.startswith("/opt/marker:")
    down = cli("--name", name, "down")
    assert down.returncode == 0 and "removed 3 namespace(s)" in down.stderr
    assert not [ns for ns in netns.namespaces() if ns.startswith(name)]
    assert not hostfile.exists() and not (netns.ETC_NETNS / f"{name}-node1").exists()


@pytest.mark.parametrize("rate", ["100mbit"])
def test_a_shaped_link_carries_its_nominal_rate_and_an_unplugged_one_nothing(name, rate):
    cluster = netns.Cluster(name, 2, rate, netns.DEFAULT_SUBNET, 1)
    netns.up(cluster)
    env = netns.exec_env(cluster, dict(os.environ))
    listen = subprocess.Popen(netns.exec_argv(cluster, "node2", [sys.executable, "-c", THROUGHPUT, "listen"]),
                              env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    subprocess.run(netns.exec_argv(cluster, "node1", [sys.executable, "-c", THROUGHPUT, "send", "node2"]),
                   env=env, check=True, timeout=60)
    mb_s = float(listen.communicate(timeout=30)[0])
    nominal = netns.rate_bits_per_s(rate) / 8 / 1e6
    assert 0.85 * nominal < mb_s < 1.05 * nominal, (mb_s, nominal)
    netns.set_link(cluster, "node2", "down")
    probe = "import socket; socket.create_connection(('node2', 22), timeout=1)"
    cut = subprocess.run(netns.exec_argv(cluster, "node1", [sys.executable, "-c", probe]), env=env,
                         capture_output=True, text=True, timeout=60)
    assert cut.returncode != 0 and ("timed out" in cut.stderr or "unreachable" in cut.stderr), cut.stderr
