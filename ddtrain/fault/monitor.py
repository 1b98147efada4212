"""When one rank dies or raises, every other rank learns at once, says which, and exits.

torch.distributed has no failure detector of its own: a rank whose peer died waits inside its
next collective until the timeout fires (NCCL's watchdog, 10-30 minutes by default), and the
message it then prints names a socket, not a rank. ddtrain therefore keeps a second, tiny
channel beside the process group: a star of TCP connections around rank 0.

* A process that dies, however it dies (SIGKILL, the OOM killer, a segfault), has its sockets
  closed by the kernel, so its peer reads end-of-file within milliseconds. A rank that leaves
  normally says ``bye`` first, so end-of-file without ``bye`` means *lost*.
* A rank that raises sends ``fail <reason>`` before it exits.
* Both sides send ``ping`` every few seconds; a peer silent for ``comm.timeout_s`` (a frozen
  process, a node that vanished without closing its sockets) counts as lost too.
* Rank 0 relays every loss to the other ranks, so all of them stop, each printing the same line.

Wire format: one UTF-8 line per message, ``<kind> <rank> [reason]``; kinds are hello, ping, bye,
fail (to rank 0) and lost (from rank 0). Rank 0's address travels through the rendezvous store.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable

from ddtrain.errors import EXIT_BAD_INPUT, EXIT_PEER_FAILED
from ddtrain.fault.notice import tell_launcher

log = logging.getLogger(__name__)

BAD_INPUT_MARK = "bad input: "  # a failure report's reason starts so when the input is to blame

STORE_KEY = "ddtrain/monitor/address"
DIED = ("its connection closed without a goodbye: the process died (a signal such as SIGKILL, "
        "the OOM killer, or a crash in native code)")


def silent_for(seconds: float) -> str:
    return (f"no word from it for {seconds:.0f} s (comm.timeout_s): the process is frozen or its "
            "node is unreachable")


def bad_input(reason: str) -> str:
    """The reason a rank reports for bad input it met mid-run (a sample that cannot be read): the
    other ranks then exit 2 as it does, so the job's exit code says "bad input" whichever rank
    mpirun hears from first."""
    return BAD_INPUT_MARK + reason


def exit_on_loss(my_rank: int) -> Callable[[int, str], None]:
    """The production reaction: print one line and leave at once. The main thread may be stuck
    inside a collective with the dead rank, which only the timeout would end, so ``os._exit``;
    checkpoints are written atomically, so nothing already saved can be damaged by it."""

    def react(rank: int, reason: str) -> None:
        code = EXIT_BAD_INPUT if reason.startswith(BAD_INPUT_MARK) else EXIT_PEER_FAILED
        print(f"ddtrain: error: [rank {my_rank}] rank {rank} failed: {reason}; stopping this rank. "
              "Fix the cause, then rerun with trainer.resume=auto to continue from the last "
              "checkpoint", file=sys.stderr, flush=True)
        logging.shutdown()
        tell_launcher(code)
        os._exit(code)

    return react


class _Conn:
    """One peer's socket with a line buffer; sends are locked (the main thread and the monitor
    thread both send)."""

    def __init__(self, sock: socket.socket, rank: int | None = None):
        self.sock = sock
        self.rank = rank
        self.buf = b""
        self.heard = time.monotonic()
        self.said_bye = False
        self._lock = threading.Lock()

    def send(self, kind: str, rank: int, reason: str = "") -> bool:
        line = f"{kind} {rank} {' '.join(reason.split())}".rstrip() + "\n"  # one line, always
        try:
            with self._lock:
                self.sock.sendall(line.encode())
            return True
        except OSError:
            return False  # the peer is gone; its reader reports that

    def read_lines(self) -> list[str] | None:
        """Complete lines received so far; None at end-of-file."""
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError, InterruptedError):
            return []
        except OSError:
            chunk = b""
        if not chunk:
            return None
        self.heard = time.monotonic()
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [ln.decode(errors="replace") for ln in lines]


def _parse(line: str) -> tuple[str, int, str]:
    """``(kind, rank, reason)``; a malformed line reads as kind "?" and is ignored."""
    kind, _, rest = line.strip().partition(" ")
    rank, _, reason = rest.partition(" ")
    try:
        return kind, int(rank), reason
    except ValueError:
        return "?", -1, line


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class PeerMonitor:
    """The failure channel of one rank. Build with ``start_monitor``; ``close()`` on a normal end.

    ``lost`` holds ``(rank, reason)`` of the first failure heard of (None while all is well);
    ``on_lost`` is called once with them, from the monitor thread.
    """

    def __init__(self, rank: int, world_size: int, timeout_s: float,
                 on_lost: Callable[[int, str], None]):
        self.rank = rank
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.on_lost = on_lost
        self.lost: tuple[int, str] | None = None
        self._lost_event = threading.Event()
        self._closing = threading.Event()
        self._peers: dict[int, _Conn] = {}  # rank 0: every other rank; others: {0: rank 0}
        self._thread: threading.Thread | None = None
        # Pings often enough that one lost packet never looks like silence.
        self.ping_s = max(0.05, min(5.0, timeout_s / 4))

    # ------------------------------------------------------------------ set-up
    def serve(self, store, host: str, bind: str) -> None:
        """Rank 0: listen, publish the address, wait until every other rank has said hello."""
        listener = socket.create_server((bind, 0), backlog=max(16, self.world_size))
        listener.settimeout(1.0)
        port = listener.getsockname()[1]
        store.set(STORE_KEY, f"{host}:{port}")
        deadline = time.monotonic() + self.timeout_s
        try:
            while len(self._peers) < self.world_size - 1:
                if time.monotonic() > deadline:
                    missing = sorted(set(range(1, self.world_size)) - set(self._peers))
                    raise RuntimeError(
                        f"fault monitor: rank(s) {_ranks(missing)} did not connect within "
                        f"{self.timeout_s:.0f} s (comm.timeout_s); check that rank 0's host {host} "
                        "is reachable from every node (firewall, interface)")
                try:
                    sock, _ = listener.accept()
                except TimeoutError:
                    continue
                _tune(sock)
                sock.settimeout(self.timeout_s)
                conn = _Conn(sock)
                line = b""
                while not line.endswith(b"\n"):
                    part = sock.recv(256)
                    if not part:
                        break
                    line += part
                kind, rank, _ = _parse(line.decode().strip())
                if kind != "hello" or not 0 < rank < self.world_size:
                    sock.close()
                    continue
                sock.setblocking(False)
                conn.rank = rank
                self._peers[rank] = conn
        finally:
            listener.close()
        self._start(self._hub_loop)

    def join(self, store) -> None:
        """Ranks > 0: find rank 0 through the store, connect, say hello."""
        host, _, port = store.get(STORE_KEY).decode().rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=self.timeout_s)
        _tune(sock)
        conn = _Conn(sock, 0)
        if not conn.send("hello", self.rank):
            raise RuntimeError(f"fault monitor: rank 0 at {host}:{port} closed the connection at once")
        sock.settimeout(0.2)  # the reader wakes up this often to ping and to check for silence
        self._peers[0] = conn
        self._start(self._spoke_loop)

    def _start(self, loop) -> None:
        self._thread = threading.Thread(target=loop, name="ddtrain-monitor", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the threads
    def _hub_loop(self) -> None:
        sel = selectors.DefaultSelector()
        for conn in self._peers.values():
            try:
                sel.register(conn.sock, selectors.EVENT_READ, conn)
            except (ValueError, OSError):
                pass  # close() ran before this thread started: the job is ending, nothing to hear
        last_ping = 0.0
        while not self._closing.is_set() and self.lost is None:
            for key, _ in sel.select(timeout=min(0.2, self.ping_s)):
                conn: _Conn = key.data
                if not self._hear(conn):
                    sel.unregister(conn.sock)
            now = time.monotonic()
            for conn in self._peers.values():
                self._check_silence(conn, now)
            if now - last_ping >= self.ping_s:
                last_ping = now
                for conn in self._peers.values():
                    if not conn.said_bye:
                        conn.send("ping", 0)
        sel.close()

    def _spoke_loop(self) -> None:
        conn = self._peers[0]
        last_ping = 0.0
        while not self._closing.is_set() and self.lost is None:
            if not self._hear(conn):
                return
            now = time.monotonic()
            self._check_silence(conn, now)
            if now - last_ping >= self.ping_s:
                last_ping = now
                conn.send("ping", self.rank)

    def _hear(self, conn: _Conn) -> bool:
        """Read what ``conn`` sent and act on it: a goodbye, or news of a failure (``fail`` to
        rank 0, ``lost`` from it). False once the connection has ended."""
        lines = conn.read_lines()
        if lines is None:
            if not conn.said_bye and not self._closing.is_set():
                self._declare(conn.rank, DIED)
            return False
        for line in lines:
            kind, rank, reason = _parse(line)
            if kind == "bye":
                conn.said_bye = True
            elif kind in ("fail", "lost"):
                self._declare(rank, reason)
        return True

    def _check_silence(self, conn: _Conn, now: float) -> None:
        if not conn.said_bye and now - conn.heard > self.timeout_s:
            self._declare(conn.rank, silent_for(self.timeout_s))

    def _declare(self, rank: int, reason: str) -> None:
        if self.lost is not None:
            return
        self.lost = (rank, reason)
        if self.rank == 0:  # tell everyone else before reacting: the reaction may end us
            for peer, conn in self._peers.items():
                if peer != rank:
                    conn.send("lost", rank, reason)
        self._lost_event.set()
        self.on_lost(rank, reason)

    # ------------------------------------------------------------------ the main thread's side
    def report_failure(self, reason: str) -> None:
        """This rank is failing: make every other rank stop now, naming ``reason``."""
        self._closing.set()  # our own exit must not be reported as a loss by our own thread
        if self.rank == 0:
            for conn in self._peers.values():
                conn.send("lost", 0, reason)
        else:
            self._peers[0].send("fail", self.rank, reason)

    def wait_lost(self, timeout_s: float) -> tuple[int, str] | None:
        """The first failure heard of, waiting up to ``timeout_s`` for one to arrive."""
        self._lost_event.wait(timeout_s)
        return self.lost

    def close(self) -> None:
        """A normal end: say bye to every peer, then hang up."""
        self._closing.set()
        for conn in self._peers.values():
            conn.send("bye", self.rank)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        for conn in self._peers.values():
            try:
                conn.sock.close()
            except OSError:
                pass


class NullMonitor:
    """One process: nobody to watch."""

    lost = None

    def report_failure(self, reason: str) -> None:
        pass

    def wait_lost(self, timeout_s: float):
        return None

    def close(self) -> None:
        pass


def start_monitor(ctx, timeout_s: float, on_lost: Callable[[int, str], None] | None = None):
    """The monitor of this rank (a no-op on one process). Rank 0 serves; the others join.

    Rank 0 listens on every interface on a multi-host job and publishes the address the other
    ranks already reach it by (the launcher's MASTER_ADDR, else the address the store is served at).
    """
    if ctx.world_size == 1 or ctx.store is None:
        return NullMonitor()
    from ddtrain.dist.rendezvous import host_address

    monitor = PeerMonitor(ctx.rank, ctx.world_size, timeout_s, on_lost or exit_on_loss(ctx.rank))
    if ctx.is_main:
        single = ctx.env.single_host
        host = "127.0.0.1" if single else (
            ctx.env.master_addr or host_address(ctx.env, ifname=os.environ.get("GLOO_SOCKET_IFNAME")))
        monitor.serve(ctx.store, host, "127.0.0.1" if single else "")
    else:
        monitor.join(ctx.store)
    return monitor


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks[:8])) + (f" (+{len(ranks) - 8} more)" if len(ranks) > 8 else "")
