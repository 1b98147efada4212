"""The all-reduce benchmark's arithmetic: bus bandwidth, the size sweep, the alpha-beta fit."""

from __future__ import annotations

import numpy as np
import pytest

from ddtrain.perf.allreduce import (
    AllReduceRow,
    busbw,
    fit_alpha_beta,
    format_table,
    human_bytes,
    parse_size,
    sweep_sizes,
    to_json,
)


def model_rows(alpha: float, bw: float, n: int, sizes: list[int], noise: float = 0.0, seed: int = 0):
    """Rows whose times follow t = alpha + 2(n-1)/n * size / bw, times (1 + noise * N(0, 1))."""
    rng = np.random.default_rng(seed)
    rows = []
    for size in sizes:
        t = (alpha + 2 * (n - 1) / n * size / bw) * (1 + noise * rng.standard_normal())
        rows.append(AllReduceRow(size, t, size / t / 1e9, busbw(size / t / 1e9, n), 10))
    return rows


@pytest.mark.parametrize("n,ratio", [(2, 1.0), (4, 1.5), (8, 1.75), (1, 0.0)])
def test_busbw_is_algbw_times_2_n_minus_1_over_n(n, ratio):
    assert busbw(10.0, n) == pytest.approx(10.0 * ratio)


def test_busbw_rejects_no_ranks():
    with pytest.raises(ValueError, match="n=0"):
        busbw(1.0, 0)


def test_default_sweep_is_1KiB_to_256MiB_in_19_doublings():
    sizes = sweep_sizes()
    assert len(sizes) == 19
    assert sizes[0] == 1024 and sizes[-1] == 256 << 20
    assert all(b == 2 * a for a, b in zip(sizes, sizes[1:]))


def test_sweep_includes_max_and_rounds_to_fp32_elements():
    assert sweep_sizes(1024, 5000, 4) == [1024, 4096, 5000]
    assert sweep_sizes(1023, 1023) == [1024]
    assert all(s % 4 == 0 for s in sweep_sizes(10, 100_001, 3))


@pytest.mark.parametrize(
    "kw,needle",
    [({"min_bytes": 2}, "min_bytes=2"), ({"min_bytes": 4096, "max_bytes": 1024}, "max_bytes=1024"),
     ({"factor": 1}, "factor=1")],
)
def test_sweep_rejects_bad_arguments_naming_them(kw, needle):
    with pytest.raises(ValueError, match=needle):
        sweep_sizes(**kw)


@pytest.mark.parametrize("n", [2, 3, 8])
def test_fit_recovers_the_model_exactly(n):
    rows = model_rows(25e-6, 12e9, n, sweep_sizes())
    alpha, bw = fit_alpha_beta(rows, n)
    assert alpha == pytest.approx(25e-6, rel=0.01)
    assert bw == pytest.approx(12e9, rel=0.01)


@pytest.mark.parametrize("seed", range(5))
def test_fit_is_robust_to_noise(seed):
    rows = model_rows(40e-6, 3e9, 4, sweep_sizes(), noise=0.03, seed=seed)
    alpha, bw = fit_alpha_beta(rows, 4)
    assert alpha == pytest.approx(40e-6, rel=0.10)
    assert bw == pytest.approx(3e9, rel=0.10)


def test_fit_clamps_alpha_and_bandwidth():
    # Pure bandwidth (no latency) would fit a slightly negative alpha with noise: clamped to 0.
    alpha, bw = fit_alpha_beta(model_rows(0.0, 5e9, 2, sweep_sizes(), noise=0.01, seed=3), 2)
    assert alpha >= 0 and bw == pytest.approx(5e9, rel=0.05)
    # Flat times: latency only, bandwidth unbounded over these sizes (never <= 0).
    flat = [AllReduceRow(s, 1e-3, s / 1e-3 / 1e9, s / 1e-3 / 1e9, 3) for s in (1024, 2048, 4096)]
    alpha, bw = fit_alpha_beta(flat, 2)
    assert alpha == pytest.approx(1e-3) and bw > 0


def test_fit_needs_two_sizes_and_two_ranks():
    rows = model_rows(1e-5, 1e9, 2, [1024, 2048])
    with pytest.raises(ValueError, match="2 distinct sizes"):
        fit_alpha_beta(rows[:1], 2)
    with pytest.raises(ValueError, match="2 distinct sizes"):
        fit_alpha_beta([rows[0], rows[0]], 2)
    with pytest.raises(ValueError, match="n=1"):
        fit_alpha_beta(rows, 1)


def test_sizes_read_and_print_in_KiB_multiples():
    assert [parse_size(s) for s in ("1K", "256M", "1G", "4096", "64KiB", "2m")] == [
        1024, 256 << 20, 1 << 30, 4096, 64 << 10, 2 << 20]
    with pytest.raises(ValueError, match="'12X' is not a size"):
        parse_size("12X")
    assert [human_bytes(s) for s in (4, 1024, 1536, 256 << 20, 2 << 30)] == [
        "4 B", "1 KiB", "1.5 KiB", "256 MiB", "2 GiB"]


def test_table_and_json():
    rows = model_rows(1e-5, 1e9, 2, [1024, 256 << 20])
    table = format_table(rows).splitlines()
    assert table[0] == ("| size | time (us) | cpu (us) | compute lost beside it | time beside compute (us) "
                        "| algbw (GB/s) | busbw (GB/s) |")
    assert table[2].startswith("| 1 KiB | 11.0 | - | - | - |") and table[3].startswith("| 256 MiB |")
    row = AllReduceRow(1024, 2e-3, 0.5, 0.5, 3, cpu_s=4e-4, compute_lost=0.25, beside_s=3e-3)
    timed = format_table([row])
    timed = timed.splitlines()[2]
    assert timed.startswith("| 1 KiB | 2000.0 | 400.0 | 25% | 3000.0 |")
    doc = to_json(rows, n=2, backend="gloo", device="cpu", alpha=1e-5, bus_bw=float("inf"))
    assert doc["n"] == 2 and doc["rows"][1]["size_bytes"] == 256 << 20
    assert doc["fit"] == {"model": "t = alpha + 2(n-1)/n * size / B", "alpha_s": 1e-5, "bus_bw_GBps": None}
