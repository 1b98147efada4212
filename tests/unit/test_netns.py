"""The namespace cluster's pure parts: rates, shaping, the files it writes, the commands it runs."""

from __future__ import annotations

import pytest

from ddtrain.testing import netns

CLUSTER = netns.Cluster("ddtx", 3, "100mbit", "10.213.7.0/24", 2)


def test_rates_parse_and_a_bad_one_names_the_fix():
    assert netns.rate_bits_per_s("100mbit") == 1e8 and netns.rate_bits_per_s("1gbit") == 1e9
    assert netns.rate_bits_per_s("2.5gbit") == 2.5e9 and netns.rate_bits_per_s("none") is None
    with pytest.raises(netns.ClusterError, match="--rate '100mbps' is not a rate; fix: e.g. --rate 100mbit"):
        netns.rate_bits_per_s("100mbps")


def test_the_token_bucket_holds_4_ms_of_traffic_and_never_less_than_64_kb():
    assert netns.tbf_args("1gbit") == ["rate", "1gbit", "burst", "500000", "latency", "100ms"]
    assert netns.tbf_args("100mbit")[3] == str(64 * 1024)


def test_nodes_their_addresses_and_the_files_that_name_them():
    assert CLUSTER.node_names() == ["node1", "node2", "node3"]
    assert CLUSTER.address("node3") == "10.213.7.3" and CLUSTER.namespace("node2") == "ddtx-node2"
    assert netns.hostfile_text(CLUSTER) == "node1 slots=2\nnode2 slots=2\nnode3 slots=2\n"
    hosts = netns.hosts_text(CLUSTER, "node1").splitlines()
    assert hosts[0] == "127.0.0.1 localhost" and "10.213.7.2 node2" in hosts
    assert str(CLUSTER.hostfile).endswith("/ddtx/hostfile")


def test_the_agent_runs_open_mpis_remote_command_on_the_named_node(tmp_path):
    import subprocess

    # The agent drops ssh's options, takes the host, and hands the rest to exec on that node;
    # run with 'echo' in place of Python to see the command it would run.
    agent = tmp_path / "agent"
    agent.write_text(netns.agent_text(CLUSTER).replace(f"exec {netns.sys.executable}", "exec echo", 1))
    agent.chmod(0o755)
    out = subprocess.run([str(agent), "-x", "node2", "PATH=/x ; export PATH ;", "prted", "--debug"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[:6] == ["-m", "ddtrain.testing.netns", "--name", "ddtx", "exec", "node2"]
    assert out[6:9] == ["/bin/sh", "-c", "PATH=/x"] and out[-2:] == ["prted", "--debug"]


def test_exec_enters_the_node_under_its_hostname_with_the_callers_environment():
    argv = netns.exec_argv(CLUSTER, "node2", ["ddtrain", "model=gpt"])
    assert argv[:6] == ["ip", "netns", "exec", "ddtx-node2", "unshare", "--uts"]
    assert argv[-3:] == ["node2", "ddtrain", "model=gpt"]
    env = netns.exec_env(CLUSTER, {"PATH": "/venv/bin:/usr/bin"})
    assert env["PATH"] == "/venv/bin:/usr/bin" and env["PRTE_MCA_plm_ssh_agent"] == str(CLUSTER.agent)
    with pytest.raises(netns.ClusterError, match="no node 'node9' in cluster 'ddtx'; the nodes are node1"):
        netns.exec_argv(CLUSTER, "node9", ["true"])


def test_a_node_s_environment_is_a_user_s_shell_there(monkeypatch):
    # Started from inside another job, that job's per-rank variables must not reach the nodes.
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    env = netns.node_env(CLUSTER, {"GLOO_SOCKET_IFNAME": "lo", "X": "1"})
    assert "OMPI_COMM_WORLD_RANK" not in env and env["NCCL_DEBUG"] == "INFO" and env["X"] == "1"
    assert env["GLOO_SOCKET_IFNAME"] == "lo"  # the caller's extra wins
    assert netns.node_env(CLUSTER)["GLOO_SOCKET_IFNAME"] == netns.IFACE
    assert env["PRTE_MCA_plm_ssh_agent"] == str(CLUSTER.agent)


def test_without_root_it_refuses_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert netns.main(["up", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "netns: error: network namespaces need root; fix: run as root (sudo), or skip the cluster"


def test_a_public_subnet_or_too_many_nodes_is_refused_before_anything_is_built():
    with pytest.raises(netns.ClusterError, match="must be private"):
        netns.up(netns.Cluster("ddtx", 2, "none", "8.8.8.0/24", 1))
    with pytest.raises(netns.ClusterError, match="choose 1 to 64"):
        netns.up(netns.Cluster("ddtx", 0, "none", "10.213.7.0/24", 1))



def test_cores_give_each_node_its_own_cpus_and_exec_pins_to_them():
    pinned = netns.with_cpus(netns.Cluster("ddtx", 2, "none", "10.213.7.0/24", 1, cores=2), [5, 0, 1, 4])
    assert pinned.cpus == (0, 1, 4, 5)
    assert (pinned.node_cpus("node1"), pinned.node_cpus("node2")) == ([0, 1], [4, 5])
    argv = netns.exec_argv(pinned, "node2", ["true"])
    assert argv[:3] == ["taskset", "-c", "4,5"] and argv[3:6] == ["ip", "netns", "exec"]
    shared = netns.with_cpus(CLUSTER, [0, 1])
    assert shared.node_cpus("node3") == [0, 1] and netns.exec_argv(shared, "node3", ["true"])[0] == "ip"
    with pytest.raises(netns.ClusterError, match=r"--cores 2 for 3 nodes needs 6 CPUs and this process "
                                                 r"may use 4; fix: --cores 1 or fewer"):
        netns.with_cpus(netns.Cluster("ddtx", 3, "none", "10.213.7.0/24", 1, cores=2), [0, 1, 2, 3])
