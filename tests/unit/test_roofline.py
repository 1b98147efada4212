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
    records = record_step(net, x, y, cross_entropy, torch.optim.SGD(net.parameters(), lr=0.1)).records
    assert sum(r.flops for r in records) == expected
    by = totals(records)
    assert by[("forward", "matmul")]["flops"] == 2 * 32 * (64 * 128 + 128 * 10)
    # Backward: the weight gradients of both layers and the input gradient of the second only
    # (the data needs no gradient), so twice the forward minus the first layer's product.
    assert by[("backward", "matmul")]["flops"] == 2 * 2 * 32 * (64 * 128 + 128 * 10) - 2 * 32 * 64 * 128
    assert {r.phase for r in records} == {"forward", "backward", "optimizer"}
    assert all(r.flops == 0 for r in records if r.phase == "optimizer")
    assert {r.op_class for r in records if r.phase == "optimizer"} <= {"optimizer", "view"}
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


def test_a_region_counts_each_storage_once_and_brackets_its_backward():
    from ddtrain.perf.opcount import region

    w = torch.randn(16, 16, requires_grad=True)
    x = torch.randn(4, 16, requires_grad=True)

    def loop():
        h = xin
        for _ in range(5):
            h = torch.tanh(h @ w)
        return (h,)

    with OpRecorder() as recorder:
        xin = x * 1.0
        (out,) = region("recurrence", loop, xin, steps=5)
        recorder.phase = "backward"
        out.sum().backward()
    assert [r.kind for r in recorder.regions] == ["recurrence"] and recorder.regions[0].info == {"steps": 5}
    inside = [r for r in recorder.records if r.region == 0]
    fwd = [r for r in inside if r.phase == "forward"]
    assert [r.op for r in fwd if r.op_class != "view"] == ["mm", "tanh"] * 5
    # w (1 KiB) is read by all five matmuls, but a fused kernel reads it once, with the region's
    # input; what the region makes along the way (h at each step) stays on chip.
    mms = [r for r in fwd if r.op == "mm"]
    assert sum(r.bytes for r in mms) == 5 * (4 * 16 * 4 + 1024 + 4 * 16 * 4)
    assert mms[0].fresh_bytes == 4 * 16 * 4 + 1024
    assert sum(r.fresh_bytes for r in fwd) == mms[0].fresh_bytes
    # Backward: the region's ops run between its output's gradient and its input's.
    bwd = [r for r in recorder.records if r.phase == "backward"]
    assert any(r.region == 0 for r in bwd)
    inside_bwd = [i for i, r in enumerate(bwd) if r.region == 0]
    assert inside_bwd == list(range(inside_bwd[0], inside_bwd[-1] + 1))  # one unbroken stretch
    assert sum(r.op == "mm" for r in bwd if r.region == 0) == 10  # dh and dw at each of 5 steps
    assert bwd[-1].region == -1 and any(r.op == "mul" for r in bwd[inside_bwd[-1]:])  # x * 1.0: after
    # With no recorder active, region() is just the call.
    assert region("recurrence", lambda: (1,), xin) == (1,)


def test_a_fused_region_costs_one_launch_its_fresh_bytes_and_a_barrier_per_step():
    from ddtrain.perf.opcount import Region
    from ddtrain.perf.roofline import op_times

    dev = Roofline("d", matmul_flops=1e12, memory_Bps=1e11, per_op_s=1e-5, queued_launches=True,
                   step_sync_s=1e-6, efficiency={"matmul": 1.0, "elementwise": 1.0, "reduction": 1.0,
                                                 "optimizer": 1.0, "recurrent": 0.5})
    ops = [OpRecord("mm", "matmul", "forward", 10**6, 10**6, "float32", 0, 10**4) for _ in range(10)]
    outside = OpRecord("add", "elementwise", "forward", 0, 10**7, "float32")
    regions = [Region("recurrence", {"steps": 10})]
    # Op by op: each matmul is launch-bound (1 us of FLOPs, 10 us of bytes, 10 us launch).
    unfused = op_times([*ops, outside], dev, regions, fused=set())
    assert unfused == pytest.approx([1e-5] * 10 + [1e-4])
    fused = op_times([*ops, outside], dev, regions, fused={0})
    # 10 MFLOP at half of 1 TFLOP/s = 20 us, over 100 kB of fresh bytes (1 us), plus 10 barriers.
    assert fused[:9] == [0.0] * 9 and fused[9] == pytest.approx(2e-5 + 1e-5)
    assert fused[10] == pytest.approx(1e-4)


def test_a_gpu_op_costs_the_longer_of_kernel_and_launch_and_a_cpu_op_their_sum():
    gpu = Roofline("g", 1e12, 1e11, per_op_s=7e-6, queued_launches=True)
    cpu = Roofline("c", 1e12, 1e11, per_op_s=7e-6)
    tiny = _rec(0, 10**3, "elementwise")
    assert gpu.op_time(tiny) == pytest.approx(7e-6)
    assert cpu.op_time(tiny) == pytest.approx(7e-6 + 1e-8)
    # The optimizer's update runs as a few multi-tensor kernels on a GPU: bytes only.
    update = _rec(0, 10**8, "optimizer", "optimizer")
    assert gpu.op_time(update) == pytest.approx(1e-3)
    assert cpu.op_time(update) == pytest.approx(1e-3 + 7e-6)


def test_every_datasheet_gpu_has_a_generation_with_sourced_efficiencies():
    from ddtrain.perf.efficiency import DEVICES, GENERATIONS, device_roofline
    from ddtrain.perf.peak import PEAK_TABLE
    from ddtrain.perf.roofline import OP_EFFICIENCIES

    assert set(DEVICES) == set(PEAK_TABLE)
    for key, (generation, sms, capability) in DEVICES.items():
        g = GENERATIONS[generation]
        assert sms > 0 and 50 <= capability <= 90 and g.sources, key
        for dtype in PEAK_TABLE[key].tflops:
            eff = g.efficiency(dtype)
            assert set(eff) == set(OP_EFFICIENCIES) and all(0 < v <= 1 for v in eff.values()), (key, dtype)
    h100 = device_roofline("NVIDIA H100 80GB HBM3", "bf16")
    assert (h100.name, h100.matmul_flops, h100.memory_Bps, h100.sm_count, h100.capability) == (
        "h100_sxm bf16", 989.4e12, 3.35e12, 132, 90)
    assert h100.efficiency["matmul"] == 0.803 and h100.queued_launches and "MAMF" in h100.source
    assert device_roofline("v100_sxm2", "fp32").efficiency["matmul"] == 0.94  # fp32 CUDA cores
    assert device_roofline("v100_sxm2", "bf16").efficiency["matmul"] == 0.90  # fp16 tensor cores
    with pytest.raises(ValueError, match="no datasheet peak for device 'tpu'"):
        device_roofline("tpu", "fp32")
