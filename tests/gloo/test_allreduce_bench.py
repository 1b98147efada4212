"""The all-reduce benchmark on two Gloo ranks on loopback: ranks agree, numbers are sane."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from ddtrain.dist.env import LaunchEnv
from ddtrain.dist.group import DistContext
from ddtrain.perf.allreduce import AllReduceRow, fit_alpha_beta, run_sweep, sweep_sizes
from tests.gloo.harness import run_ranks

SIZES = sweep_sizes(1024, 64 << 10)  # 1 KiB .. 64 KiB


def sweep(ctx, dtype_name: str):
    seen = []
    rows = run_sweep(ctx, SIZES, dtype=getattr(torch, dtype_name), budget_s=0.02, max_iters=20,
                     on_row=seen.append)
    assert seen == rows  # on_row sees every row, in order, on every rank
    return [asdict(r) for r in rows]


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_two_ranks_agree_and_report_bus_bandwidth(dtype_name):
    per_rank = run_ranks(2, sweep, dtype_name)
    r0, r1 = per_rank
    assert [r["size_bytes"] for r in r0] == [r["size_bytes"] for r in r1] == SIZES
    # The iteration count and the slowest-rank times are collective decisions: identical.
    assert r0 == r1
    for r in r0:
        assert 3 <= r["iters"] <= 20
        assert r["time_s"] > 0
        assert r["algbw_GBps"] == pytest.approx(r["size_bytes"] / r["time_s"] / 1e9)
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * 2 * (2 - 1) / 2)
        # Two ranks on this machine's cores with their Gloo threads: the matmuls beside an
        # all-reduce lose some of their speed, never more than all of it.
        assert 0.0 <= r["compute_lost"] <= 1.0
        assert r["beside_s"] > 0  # timed in flight beside the matmuls, the busiest rank's median
        assert r["cpu_s"] > 0  # on loopback every byte is copied by a CPU
    alpha, bw = fit_alpha_beta([AllReduceRow(**r) for r in r0], 2)
    assert alpha > 0 and bw > 0


def test_one_process_is_refused_with_the_fix():
    one = DistContext(LaunchEnv(), torch.device("cpu"), None)  # what init_distributed gives 1 rank
    with pytest.raises(ValueError, match="needs >= 2 ranks; run it under mpirun -np N"):
        run_sweep(one, SIZES)
