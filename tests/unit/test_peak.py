"""Peak table, device-name matching, the matmul probe, and fraction of peak <= 1."""

from __future__ import annotations

import math

import pytest
import torch

from ddtrain.perf.mfu import ImpossibleMeasurement, achieved_flops, fraction_of_peak
from ddtrain.perf.peak import PEAK_TABLE, Peak, PeakError, match_device, probe_peak, resolve_peak, table_peak


@pytest.mark.parametrize(
    "name, key",
    [
        ("NVIDIA H100 80GB HBM3", "h100_sxm"),
        ("NVIDIA H100 PCIe", "h100_pcie"),
        ("NVIDIA H100 NVL", "h100_nvl"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA A100-PCIE-40GB", "a100"),
        ("Tesla V100-SXM2-16GB", "v100_sxm2"),
        ("Tesla V100-PCIE-32GB", "v100_pcie"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA A10", "a10"),
        ("NVIDIA L4", "l4"),
        ("Tesla P100-PCIE-16GB", "p100_pcie"),
        ("Tesla P100-SXM2-16GB", "p100_sxm2"),
        ("GeForce GTX TITAN X", "titanx_maxwell"),
        ("h100_sxm", "h100_sxm"),
    ],
)
def test_device_names_map_to_their_own_entry(name, key):
    assert match_device(name) == key


@pytest.mark.parametrize("name", ["NVIDIA A10G", "NVIDIA TITAN X (Pascal)", "NVIDIA GeForce RTX 4090", "cpu"])
def test_unknown_devices_do_not_borrow_another_devices_figure(name):
    # A10G is not an A10, a Pascal Titan X is not the Maxwell one: no silent fallback.
    assert match_device(name) is None
    with pytest.raises(PeakError, match="no datasheet peak"):
        table_peak(name, "fp32")


def test_table_is_dense_and_ordered_by_dtype():
    for key, entry in PEAK_TABLE.items():
        t = entry.tflops
        assert entry.source, key
        # Tensor-core paths are at least as fast as the CUDA cores; bf16 = fp16 where both exist,
        # and tf32 is half of bf16 (dense figures; a sparse figure would break this pattern).
        for fast in ("tf32", "bf16", "fp16"):
            if fast in t:
                assert t[fast] >= t["fp32"], key
        if "tf32" in t:
            assert t["bf16"] == t["fp16"] and math.isclose(t["tf32"], t["bf16"] / 2, rel_tol=0.02), key
    assert table_peak("NVIDIA H100 80GB HBM3", "bf16").flops == pytest.approx(989.4e12)


def test_missing_fast_path_is_an_error_not_a_guess():
    with pytest.raises(PeakError, match="no bf16 fast path"):
        table_peak("Tesla V100-SXM2-16GB", "bf16")
    with pytest.raises(PeakError, match="dtype"):
        table_peak("h100_sxm", "int8")


def test_cpu_peak_is_measured_and_labelled():
    torch.set_num_threads(1)
    peak = resolve_peak(torch.device("cpu"), "fp32")
    assert peak.measured and "measured" in peak.source and "measured" in peak.label
    assert peak.dtype == "fp32" and peak.flops > 1e8  # any CPU of the last 20 years does 0.1 GFLOP/s
    # A named device gives its datasheet figure, labelled as such.
    h100 = resolve_peak(torch.device("cpu"), "bf16", override="h100_sxm")
    assert not h100.measured and "datasheet" in h100.label


def test_probe_beats_a_deliberately_small_matmul():
    # The probe reports the best of its sizes, so it is at least the rate of its smallest one.
    torch.set_num_threads(1)
    small = probe_peak(torch.device("cpu"), "fp32", sizes=(64,), seconds=0.05)
    full = probe_peak(torch.device("cpu"), "fp32", sizes=(64, 512), seconds=0.05)
    assert full.flops >= small.flops * 0.9


def test_fraction_of_peak_arithmetic():
    peak = Peak(100e12, "h100_sxm", "bf16", measured=False, source="test")
    assert fraction_of_peak(achieved_flops(1000.0, 31e9), peak) == pytest.approx(0.31)


@pytest.mark.parametrize("measured", [False, True])
def test_impossible_measurement_is_an_error_not_a_number(measured):
    peak = Peak(1e12, "x", "fp32", measured=measured, source="test")
    with pytest.raises(ImpossibleMeasurement, match="exceeds the peak"):
        fraction_of_peak(1.5e12, peak)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ImpossibleMeasurement):
            fraction_of_peak(bad, peak)
    assert fraction_of_peak(1e12, peak) == 1.0  # exactly at peak is allowed
