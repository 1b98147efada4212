"""A cluster on one machine: K Linux network namespaces ("nodes") joined by a switch.

    python -m ddtrain.testing.netns up 2 --rate 100mbit   # last line: the hostfile's path
    python -m ddtrain.testing.netns exec node1 ddtrain-launch -n 2 --hostfile HOSTFILE -- ...
    python -m ddtrain.testing.netns down

Each node is a namespace ``<name>-nodeI`` with one interface, ``eth0``, at ``<subnet>.I``, and
its own hostname (``nodeI``) and /etc/hosts naming every node, as a real cluster's nodes have.
The switch is a bridge inside a namespace of its own, ``<name>-switch``, so nothing is added to
the machine's own network namespace, and the nodes can reach nothing but each other.

``--rate`` shapes each node's link with a token bucket (``tbf``) in both directions: on the
node's ``eth0`` (what it sends) and on the switch's port to it (what it receives), so a link
behaves like a full-duplex NIC of that rate.

Open MPI starts its remote daemons by running ``ssh HOST COMMAND``. ``up`` writes an agent
script that runs COMMAND on node HOST instead, and ``exec`` points Open MPI at it
(``PRTE_MCA_plm_ssh_agent``), so ``mpirun --hostfile`` and ``ddtrain-launch --hostfile`` start
ranks on the nodes unchanged. ``--cores C`` gives each node C CPUs of its own (node1 the first
C this process may use, node2 the next C, ...): everything ``exec`` and Open MPI start on a node
is pinned there, as a real node's processes cannot use another node's cores. Without it the
nodes share every CPU. ``link NODE down|up`` unplugs and replugs a node's cable: its
sockets stay open and see nothing, as when a node vanishes.

Root is needed (namespaces, interfaces, qdiscs); without it, or without namespace support,
every command refuses in one line.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

DEFAULT_NAME = "ddtn"
DEFAULT_SUBNET = "10.213.7.0/24"
STATE_ROOT = Path("/run/ddtrain-netns")
ETC_NETNS = Path("/etc/netns")
IFACE = "eth0"  # the node's interface: GLOO_SOCKET_IFNAME=eth0, as on many real nodes
MAX_NODES = 64
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(kbit|mbit|gbit)$")
_RATE_BITS = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}


class ClusterError(RuntimeError):
    """A refusal or failure, one line, naming the fix."""


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: int
    rate: str  # "none" or a tc rate such as 100mbit
    subnet: str
    slots: int
    cores: int = 0  # CPUs of its own per node; 0: the nodes share every CPU
    # The CPUs ``up`` could use, split among the nodes. Kept, since a process on a node (Open
    # MPI's agent starting another node's daemon) sees only its own node's.
    cpus: tuple[int, ...] = ()

    @property
    def state_dir(self) -> Path:
        return STATE_ROOT / self.name

    @property
    def hostfile(self) -> Path:
        return self.state_dir / "hostfile"

    @property
    def agent(self) -> Path:
        return self.state_dir / "ssh-agent"

    @property
    def switch(self) -> str:
        return f"{self.name}-switch"

    def namespace(self, node: str) -> str:
        return f"{self.name}-{node}"

    def node_names(self) -> list[str]:
        return [f"node{i}" for i in range(1, self.nodes + 1)]

    def address(self, node: str) -> str:
        net = ipaddress.ip_network(self.subnet)
        return str(net.network_address + int(node.removeprefix("node")))

    def node_cpus(self, node: str) -> list[int]:
        """The CPUs ``node`` may run on; all of them when the nodes share."""
        if self.cores == 0:
            return list(self.cpus)
        i = int(node.removeprefix("node")) - 1
        return list(self.cpus[i * self.cores:(i + 1) * self.cores])


def with_cpus(cluster: Cluster, allowed: list[int]) -> Cluster:
    """``cluster`` holding the CPUs it splits, ``allowed``; ClusterError when too few."""
    if cluster.cores < 0 or cluster.cores * cluster.nodes > len(allowed):
        raise ClusterError(f"--cores {cluster.cores} for {cluster.nodes} nodes needs "
                           f"{cluster.cores * cluster.nodes} CPUs and this process may use {len(allowed)}; "
                           f"fix: --cores {len(allowed) // cluster.nodes} or fewer (0 shares them all)")
    return replace(cluster, cpus=tuple(sorted(allowed)))


def rate_bits_per_s(rate: str) -> float | None:
    """``100mbit`` -> 1e8; ``none`` -> None; anything else: ClusterError."""
    if rate == "none":
        return None
    m = _RATE.match(rate.lower())
    if m is None:
        raise ClusterError(f"--rate {rate!r} is not a rate; fix: e.g. --rate 100mbit, 1gbit or none")
    return float(m.group(1)) * _RATE_BITS[m.group(2)]


def tbf_args(rate: str) -> list[str]:
    """The ``tc ... tbf`` parameters for ``rate``. The bucket holds 4 ms of traffic (at least
    64 KB): smaller buckets than rate/HZ throttle below the nominal rate."""
    bits = rate_bits_per_s(rate)
    assert bits is not None
    burst = max(64 * 1024, int(bits / 8 * 0.004))
    return ["rate", rate, "burst", str(burst), "latency", "100ms"]


def hostfile_text(cluster: Cluster) -> str:
    return "".join(f"{node} slots={cluster.slots}\n" for node in cluster.node_names())


def hosts_text(cluster: Cluster, node: str) -> str:
    """The node's /etc/hosts: loopback, its own name, and every node's address."""
    lines = ["127.0.0.1 localhost", "::1 localhost"]
    lines += [f"{cluster.address(n)} {n}" for n in cluster.node_names()]
    return "\n".join(lines) + "\n"


def agent_text(cluster: Cluster) -> str:
    """The script Open MPI runs as ``ssh``: ``AGENT [ssh options] HOST COMMAND...``."""
    return (
        "#!/bin/sh\n"
        "# Open MPI's ssh agent for this cluster: runs COMMAND on node HOST, as ssh would.\n"
        'while [ $# -gt 0 ]; do case "$1" in -*) shift ;; *) break ;; esac; done\n'
        'host="$1"; shift\n'
        f"exec {shlex.quote(sys.executable)} -m ddtrain.testing.netns --name {cluster.name} "
        'exec "$host" /bin/sh -c "$*"\n'
    )


# ------------------------------------------------------------------ the machine
def _run(argv: list[str], what: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        err = " ".join((proc.stderr or proc.stdout).split())[:300]
        raise ClusterError(f"{what} failed ({shlex.join(argv)}: {err})")
    return proc.stdout


def check_host() -> None:
    """Refuse in one line when this machine cannot build the cluster."""
    if os.geteuid() != 0:
        raise ClusterError("network namespaces need root; fix: run as root (sudo), or skip the cluster")
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            raise ClusterError(f"'{tool}' not found; fix: install iproute2 and util-linux")
    probe = f"ddtrain-probe-{os.getpid()}"
    try:
        _run(["ip", "netns", "add", probe], "creating a network namespace")
    except ClusterError as e:
        raise ClusterError(f"network namespaces are unavailable here: {e}") from None
    _run(["ip", "netns", "del", probe], "removing the probe namespace")


def namespaces() -> list[str]:
    out = _run(["ip", "netns", "list"], "listing namespaces")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def load(name: str) -> Cluster:
    path = STATE_ROOT / name / "cluster.json"
    try:
        fields = json.loads(path.read_text())
        return Cluster(**{**fields, "cpus": tuple(fields.get("cpus", ()))})
    except FileNotFoundError:
        raise ClusterError(f"no cluster {name!r} is up; fix: python -m ddtrain.testing.netns "
                           f"--name {name} up 2") from None


def up(cluster: Cluster) -> Path:
    """Build ``cluster`` (after removing any cluster of the same name); return its hostfile."""
    if not 1 <= cluster.nodes <= MAX_NODES:
        raise ClusterError(f"{cluster.nodes} nodes: choose 1 to {MAX_NODES}")
    net = ipaddress.ip_network(cluster.subnet)
    if not net.is_private or net.num_addresses < cluster.nodes + 2:
        raise ClusterError(f"--subnet {cluster.subnet} must be private and hold {cluster.nodes} nodes; "
                           f"fix: e.g. --subnet {DEFAULT_SUBNET}")
    rate_bits_per_s(cluster.rate)
    cluster = with_cpus(cluster, list(os.sched_getaffinity(0)))
    check_host()
    down(cluster.name)
    try:
        _build(cluster)
    except BaseException:
        down(cluster.name)
        raise
    return cluster.hostfile


def _build(c: Cluster) -> None:
    prefix = ipaddress.ip_network(c.subnet).prefixlen
    _run(["ip", "netns", "add", c.switch], "creating the switch namespace")
    _run(["ip", "-n", c.switch, "link", "add", "br0", "type", "bridge"], "creating the bridge")
    _run(["ip", "-n", c.switch, "link", "set", "br0", "up"], "starting the bridge")
    c.state_dir.mkdir(parents=True, exist_ok=True)
    for node in c.node_names():
        ns = c.namespace(node)
        _run(["ip", "netns", "add", ns], f"creating {node}")
        _run(["ip", "link", "add", IFACE, "netns", ns, "type", "veth", "peer", "name", node,
              "netns", c.switch], f"cabling {node}")
        _run(["ip", "-n", ns, "addr", "add", f"{c.address(node)}/{prefix}", "dev", IFACE],
             f"addressing {node}")
        for dev in ("lo", IFACE):
            _run(["ip", "-n", ns, "link", "set", dev, "up"], f"starting {node}'s {dev}")
        _run(["ip", "-n", c.switch, "link", "set", node, "master", "br0"], f"plugging {node} in")
        _run(["ip", "-n", c.switch, "link", "set", node, "up"], f"starting {node}'s switch port")
        if c.rate != "none":
            _run(["tc", "-n", ns, "qdisc", "replace", "dev", IFACE, "root", "tbf", *tbf_args(c.rate)],
                 f"shaping {node}'s uplink")
            _run(["tc", "-n", c.switch, "qdisc", "replace", "dev", node, "root", "tbf", *tbf_args(c.rate)],
                 f"shaping {node}'s downlink")
        etc = ETC_NETNS / ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(hosts_text(c, node))
    c.hostfile.write_text(hostfile_text(c))
    c.agent.write_text(agent_text(c))
    c.agent.chmod(0o755)
    (c.state_dir / "cluster.json").write_text(json.dumps(asdict(c)))


def down(name: str) -> list[str]:
    """Stop every process on the nodes, remove the namespaces and files; return what was removed."""
    mine = [ns for ns in namespaces() if ns.startswith(f"{name}-")]
    for ns in mine:  # a node loses power: its processes go first, or they keep the namespace busy
        pids = _run(["ip", "netns", "pids", ns], f"listing {ns}'s processes").split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    for ns in mine:
        _run(["ip", "netns", "del", ns], f"removing {ns}")
        shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
    shutil.rmtree(STATE_ROOT / name, ignore_errors=True)
    return mine


def exec_argv(cluster: Cluster, node: str, command: list[str]) -> list[str]:
    """argv that runs ``command`` on ``node`` under its own hostname."""
    if node not in cluster.node_names():
        raise ClusterError(f"no node {node!r} in cluster {cluster.name!r}; the nodes are "
                           f"{', '.join(cluster.node_names())}")
    if not command:
        raise ClusterError("exec needs a command; fix: exec node1 hostname")
    # unshare --uts: the hostname is the node's own, so logs and Open MPI name nodes as a cluster would.
    argv = ["ip", "netns", "exec", cluster.namespace(node), "unshare", "--uts", "/bin/sh", "-c",
            'hostname "$0" && exec "$@"', node, *command]
    if cluster.cores:
        if not cluster.cpus:  # the caller's own Cluster, before up() chose the CPUs
            cluster = load(cluster.name)
        argv = ["taskset", "-c", ",".join(map(str, cluster.node_cpus(node))), *argv]
    return argv


def exec_env(cluster: Cluster, environ: dict[str, str]) -> dict[str, str]:
    """The caller's environment, with Open MPI's ssh agent pointed at this cluster's."""
    return {**environ, "PRTE_MCA_plm_ssh_agent": str(cluster.agent)}


def node_env(cluster: Cluster, extra: dict[str, str] | None = None) -> dict[str, str]:
    """What a user's shell on a node exports: this process's environment without an outer
    launcher's per-rank variables, Gloo on the nodes' interface, plus ``extra``; with Open MPI's
    ssh agent pointed at this cluster's."""
    from ddtrain.launcher.mpirun import child_env, running_as_root

    env = {**child_env(os.environ, is_root=running_as_root()), "GLOO_SOCKET_IFNAME": IFACE}
    return exec_env(cluster, {**env, **(extra or {})})


def set_link(cluster: Cluster, node: str, state: str) -> None:
    """Unplug (``down``) or replug (``up``) ``node``'s cable at the switch."""
    if node not in cluster.node_names():
        raise ClusterError(f"no node {node!r} in cluster {cluster.name!r}")
    _run(["ip", "-n", cluster.switch, "link", "set", node, state], f"setting {node}'s link {state}")


def node_pids(cluster: Cluster, node: str) -> list[int]:
    out = _run(["ip", "netns", "pids", cluster.namespace(node)], f"listing {node}'s processes")
    return [int(p) for p in out.split()]


# ------------------------------------------------------------------ command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ddtrain.testing.netns",
                                description="A cluster of network namespaces on this machine (root).")
    p.add_argument("--name", default=DEFAULT_NAME, help=f"cluster name, the namespaces' prefix "
                                                        f"(default: {DEFAULT_NAME})")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="build K nodes (rebuilds one of the same name); prints the hostfile last")
    u.add_argument("nodes", type=int)
    u.add_argument("--rate", default="none", help="each node's link rate: 100mbit, 1gbit, ... or none")
    u.add_argument("--subnet", default=DEFAULT_SUBNET, help=f"private subnet (default: {DEFAULT_SUBNET})")
    u.add_argument("--slots", type=int, default=2, help="ranks per node in the hostfile (default: 2)")
    u.add_argument("--cores", type=int, default=0,
                   help="CPUs of its own per node, pinned (default: 0, the nodes share every CPU)")
    sub.add_parser("down", help="remove the cluster and stop everything on it")
    e = sub.add_parser("exec", help="run a command on a node, with this environment")
    e.add_argument("node")
    e.add_argument("command", nargs=argparse.REMAINDER)
    ln = sub.add_parser("link", help="unplug (down) or replug (up) a node's cable")
    ln.add_argument("node")
    ln.add_argument("state", choices=("down", "up"))
    sub.add_parser("hostfile", help="print the hostfile's path")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prog = "netns"
    try:
        if args.cmd == "up":
            cluster = Cluster(args.name, args.nodes, args.rate.lower(), args.subnet, args.slots, args.cores)
            t0 = time.perf_counter()
            hostfile = up(cluster)
            print(f"{prog}: {cluster.nodes} node(s) up in {time.perf_counter() - t0:.1f} s: "
                  + ", ".join(f"{n}={cluster.address(n)}" for n in cluster.node_names())
                  + f"; links {cluster.rate}; interface {IFACE}"
                  + (f"; {cluster.cores} CPU(s) per node" if cluster.cores else "; CPUs shared"),
                  file=sys.stderr)
            print(hostfile)
        elif args.cmd == "down":
            removed = down(args.name)
            print(f"{prog}: removed {len(removed)} namespace(s)", file=sys.stderr)
        elif args.cmd == "exec":
            cluster = load(args.name)
            argv_ = exec_argv(cluster, args.node, args.command)
            os.execvpe(argv_[0], argv_, exec_env(cluster, dict(os.environ)))
        elif args.cmd == "link":
            set_link(load(args.name), args.node, args.state)
        else:
            print(load(args.name).hostfile)
    except ClusterError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
