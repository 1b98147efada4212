"""Operation counts of a training step, and their time on a device from the roofline."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddtrain.loss import cross_entropy
from ddtrain.perf.flops import count_flops
from ddtrain.perf.opcount import OpRecord, OpRecorder, record_step, totals
from ddtrain.perf.roofline import Roofline, phase_times


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def test_a_steps_flops_are_flop_counters_and_each_phase_is_labelled():
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    expected = count_flops(_net(), x, y, cross_entropy)
    net = _net()
    records = record_step(net, x, y, cross_entropy, torch.optim.SGD(net.parameters(), lr=0.1))
    assert sum(r.flops for r in records) == expected
    by = totals(records)
    assert by[("forward", "matmul")]["flops"] == 2 * 32 * (64 * 128 + 128 * 10)
    # Backward: the weight gradients of both layers and the input gradient of the second only
    # (the data needs no gradient), so twice the forward minus the first layer's product.
    assert by[("backward", "matmul")]["flops"] == 2 * 2 * 32 * (64 * 128 + 128 * 10) - 2 * 32 * 64 * 128
    assert {r.phase for r in records} == {"forward", "backward", "optimizer"}
    assert all(r.flops == 0 for r in records if r.phase == "optimizer")
    assert all(r.bytes == 0 for r in records if r.op_class == "view")


def test_an_ops_bytes_are_its_inputs_and_outputs_and_its_dtype_is_kept():
    a, b = torch.ones(1000), torch.ones(1000)
    with OpRecorder() as recorder:
        a + b
        a.to(torch.bfloat16) * 2
    add, cast, mul = recorder.records
    assert (add.op, add.op_class, add.bytes, add.dtype) == ("add", "elementwise", 3 * 4000, "float32")
    assert cast.bytes == 4000 + 2000
    assert (mul.bytes, mul.dtype) == (2 * 2000, "bfloat16")


def _rec(flops: int, nbytes: int, op_class: str = "matmul", phase: str = "forward") -> OpRecord:
    return OpRecord("op", op_class, phase, flops, nbytes, "float32")


def test_the_roofline_takes_the_higher_roof_then_efficiency_then_the_per_op_cost():
    dev = Roofline("d", matmul_flops=1e12, memory_Bps=1e11, per_op_s=1e-6,
                   efficiency={"matmul": 0.5, "elementwise": 0.8, "reduction": 1.0})
    compute_bound = _rec(10**9, 10**6)  # 1 ms of FLOPs, 10 us of bytes
    assert dev.bound(compute_bound) == "compute"
    assert dev.op_time(compute_bound) == pytest.approx(1e-3 / 0.5 + 1e-6)
    memory_bound = _rec(0, 10**8, "elementwise")  # 1 ms of bytes
    assert dev.bound(memory_bound) == "memory"
    assert dev.op_time(memory_bound) == pytest.approx(1e-3 / 0.8 + 1e-6)
    assert dev.op_time(_rec(0, 10**8, "view")) == 0.0
    times = phase_times([compute_bound, _rec(0, 10**8, "reduction", "backward")], dev)
    assert times == pytest.approx({"forward": 2e-3 + 1e-6, "backward": 1e-3 + 1e-6, "optimizer": 0.0})


def test_every_datasheet_device_has_its_memory_roof_and_a_ridge_where_matmuls_turn_compute_bound():
    from ddtrain.perf.peak import MEMORY_GBPS, PEAK_TABLE, table_memory_bandwidth, table_peak

    assert set(MEMORY_GBPS) == set(PEAK_TABLE)
    assert table_memory_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    with pytest.raises(ValueError, match="no datasheet memory bandwidth for device 'tpu'"):
        table_memory_bandwidth("tpu")
    h100 = Roofline("h100_sxm", table_peak("h100_sxm", "bf16").flops, table_memory_bandwidth("h100_sxm"))
    # Ridge point: 989.4 TFLOP/s over 3.35 TB/s, about 295 FLOP per byte.
    assert h100.matmul_flops / h100.memory_Bps == pytest.approx(295.3, rel=1e-3)
    n = 4096  # a bf16 matmul of 4096^3: 2n^3 FLOPs over 3 n^2 x 2 bytes, far right of the ridge
    assert h100.bound(_rec(2 * n**3, 3 * n * n * 2)) == "compute"
    assert h100.bound(_rec(0, 3 * n * n * 2, "elementwise")) == "memory"
