"""The fault monitor in one process: three ranks as threads over real sockets and a TCPStore."""

from __future__ import annotations

import datetime
import threading
import time

import pytest
from torch.distributed import TCPStore

from ddtrain.fault.monitor import DIED, PeerMonitor, _parse


class Ranks:
    def __init__(self, world: int = 3, timeout_s: float = 20.0):
        timeout = datetime.timedelta(seconds=20)
        server = TCPStore("127.0.0.1", 0, 1, True, timeout=timeout, wait_for_workers=False, use_libuv=True)
        # One client per rank, as in a real job (a client blocked in get() serves nobody else).
        self.stores = [server] + [
            TCPStore("127.0.0.1", server.port, 1, False, timeout=timeout, use_libuv=True)
            for _ in range(world - 1)
        ]
        self.heard: dict[int, list[tuple[int, str]]] = {r: [] for r in range(world)}
        self.monitors = [
            PeerMonitor(r, world, timeout_s, lambda rank, why, me=r: self.heard[me].append((rank, why)))
            for r in range(world)
        ]
        hub = threading.Thread(target=self.monitors[0].serve, args=(self.stores[0], "127.0.0.1", "127.0.0.1"))
        hub.start()
        for m, store in zip(self.monitors[1:], self.stores[1:]):
            m.join(store)
        hub.join(timeout=20)
        assert not hub.is_alive()

    def wait_heard(self, ranks, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(self.heard[r] for r in ranks):
            time.sleep(0.01)

    def kill(self, rank: int) -> None:
        """What the kernel does for a SIGKILLed process: its sockets close, no goodbye."""
        m = self.monitors[rank]
        m._closing.set()  # its own thread is "dead" too
        for conn in m._peers.values():
            conn.sock.close()

    def close(self, ranks=None) -> None:
        for r in ranks if ranks is not None else range(len(self.monitors)):
            self.monitors[r].close()


def test_a_normal_end_reports_nothing():
    ranks = Ranks()
    time.sleep(0.3)
    ranks.close([1, 0, 2])  # any order: rank 0 may hang up before the others say bye
    time.sleep(0.3)
    assert ranks.heard == {0: [], 1: [], 2: []}


@pytest.mark.parametrize("dead", [1, 2])
def test_a_killed_rank_is_named_on_every_other_rank(dead):
    ranks = Ranks()
    t0 = time.monotonic()
    ranks.kill(dead)
    others = [r for r in range(3) if r != dead]
    ranks.wait_heard(others)
    assert time.monotonic() - t0 < 2.0  # end-of-file, not a timeout
    for r in others:
        assert ranks.heard[r] == [(dead, DIED)]
    assert ranks.heard[dead] == []
    ranks.close(others)


def test_a_killed_rank_0_is_named_by_the_others():
    ranks = Ranks()
    ranks.kill(0)
    ranks.wait_heard([1, 2])
    assert ranks.heard[1] == [(0, DIED)] and ranks.heard[2] == [(0, DIED)]


@pytest.mark.parametrize("failing", [0, 2])
def test_a_failing_rank_s_reason_reaches_every_other_rank(failing):
    ranks = Ranks()
    ranks.monitors[failing].report_failure("RuntimeError: CUDA out of memory\n(traceback line)")
    others = [r for r in range(3) if r != failing]
    ranks.wait_heard(others)
    for r in others:
        assert ranks.heard[r] == [(failing, "RuntimeError: CUDA out of memory (traceback line)")]
        assert ranks.monitors[r].wait_lost(0) == ranks.heard[r][0]
    ranks.kill(failing)  # then it exits: that must not be reported a second time
    time.sleep(0.3)
    assert all(len(ranks.heard[r]) == 1 for r in others)


def test_a_silent_rank_is_lost_after_the_timeout():
    ranks = Ranks(world=2, timeout_s=0.6)
    ranks.monitors[1]._closing.set()  # rank 1 freezes: its socket stays open, its pings stop
    t0 = time.monotonic()
    ranks.wait_heard([0], timeout_s=5.0)
    waited = time.monotonic() - t0
    assert ranks.heard[0] and ranks.heard[0][0][0] == 1
    assert "no word from it for 1 s" in ranks.heard[0][0][1]
    assert 0.4 < waited < 3.0


def test_wait_lost_returns_none_while_all_is_well():
    ranks = Ranks(world=2)
    assert ranks.monitors[1].wait_lost(0.2) is None
    ranks.close()


def test_malformed_lines_are_ignored():
    assert _parse("lost 3 it broke") == ("lost", 3, "it broke")
    assert _parse("garbage") == ("?", -1, "garbage")
