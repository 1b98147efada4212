"""What the compiled kernels ask of a GPU, and how the recurrence planner uses it (the compiles
themselves run in tests/compile)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ddtrain.kernels import rnn_plan
from ddtrain.kernels.offline import TARGETS, Config, Resources, parse_resource_usage, programs_per_sm, row
from ddtrain.kernels.rnn_plan import Device, plan_recurrence

CUOBJDUMP = """
Resource usage:
 Common:
  GLOBAL:0
 Function _recurrence_bwd:
  REG:167 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:620 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _recurrence_fwd:
  REG:64 STACK:1480 SHARED:1024 LOCAL:8 CONSTANT[0]:616 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


def test_resource_usage_is_read_per_function_from_cuobjdump():
    assert parse_resource_usage(CUOBJDUMP, "_recurrence_fwd") == Resources(64, 1480, 8, 1024)
    assert parse_resource_usage(CUOBJDUMP, "_recurrence_bwd") == Resources(167, 0, 0, 1024)
    with pytest.raises(ValueError, match="no resource line for _move_blocks"):
        parse_resource_usage(CUOBJDUMP, "_move_blocks")


def test_programs_per_sm_are_limited_by_registers_threads_and_shared_memory():
    h100 = TARGETS["sm_90"]
    # 238 registers round up to 240 per thread: 8 warps x 32 x 240 = 61440 of 65536: one program.
    assert programs_per_sm(h100, Resources(238, 0, 0, 1024), num_warps=8) == 1
    assert programs_per_sm(h100, Resources(32, 0, 0, 1024), num_warps=4) == 16  # 2048 threads / 128
    assert programs_per_sm(h100, Resources(32, 0, 0, 100 * 1024), num_warps=4) == 2  # 227 KB / 100 KB
    assert programs_per_sm(h100, Resources(255, 0, 0, 0), num_warps=16) == 0  # 130560 > 65536 registers


def test_a_persistent_grid_must_fit_at_once_and_keep_its_slice_in_registers():
    base = Config("recurrence_fwd", "sm_90", "fp16", "gru", "tanh", "fma", 1024, 4, "persistent", 128, 8, 8)
    ok = row(base, Resources(238, 0, 0, 1024))
    assert ok.co_resident and ok.problems == []
    spilled = row(base, Resources(64, 1480, 0, 1024))
    assert "spills in a persistent kernel" in spilled.problems[0]
    assert row(base, Resources(128, 32, 0, 1024)).problems == []  # a few temporaries: allowed
    from dataclasses import replace

    too_big = row(replace(base, num_warps=16), Resources(255, 0, 0, 1024))
    assert too_big.programs_per_sm == 0 and not too_big.co_resident
    assert "cannot be co-resident" in too_big.problems[0]
    # A refused candidate is a measurement, not a problem; a step-wise kernel needs no co-residency.
    assert row(replace(base, planned=False), Resources(64, 1480, 0, 1024)).problems == []
    assert row(replace(base, path="stepwise"), Resources(255, 0, 0, 1024)).co_resident is None
    assert row(base, Resources(0, 0, 0, 0, error="ptxas fatal")).problems == ["compile error: ptxas fatal"]


def test_the_planner_refuses_a_persistent_shape_whose_compiled_kernel_spills(monkeypatch):
    h100 = Device(132, capability=90)
    args = dict(hidden=2048, batch=4, gates=3, element_size=2, device=h100)
    candidate = plan_recurrence(**args, measured=False)
    assert candidate.path == "persistent"
    key = (90, 3, 2, "fma", 2048, candidate.block_h, candidate.num_warps)
    monkeypatch.setattr(rnn_plan, "_measured", lambda: {key: 1480})
    plan = plan_recurrence(**args)
    assert plan.path == "stepwise"
    assert "compiled for sm_90 keeps 1480 bytes per thread outside its registers" in plan.reason
    with pytest.raises(ValueError, match="persistent path impossible: the persistent kernel compiled"):
        plan_recurrence(**args, want="persistent")
    monkeypatch.setattr(rnn_plan, "_measured", lambda: {key: 0})
    assert plan_recurrence(**args) == candidate  # measured and clean
    monkeypatch.setattr(rnn_plan, "_measured", lambda: {key: rnn_plan.SPILL_ALLOWANCE})
    small = plan_recurrence(**args)
    assert small.path == "persistent"
    assert "32 bytes per thread spilled, within the 32-byte allowance" in small.reason
    monkeypatch.setattr(rnn_plan, "_measured", lambda: {})
    unmeasured = plan_recurrence(**args)
    assert unmeasured.path == "persistent" and "not measured for this GPU" in unmeasured.reason
    # Another architecture's figures say nothing of this one.
    monkeypatch.setattr(rnn_plan, "_measured", lambda: {(80, *key[1:]): 1480})
    assert plan_recurrence(**args).path == "persistent"


def test_a_tensor_core_kernel_over_the_gpus_shared_memory_hands_over_to_the_cuda_core_kernel(monkeypatch):
    h100 = Device(132, capability=90, shared_per_block=227 * 1024)
    args = dict(hidden=1024, batch=4, gates=1, element_size=2, mm="dot")
    monkeypatch.setattr(rnn_plan, "measured_shared", lambda *a: 256 * 1024)
    plan = plan_recurrence(**args, device=h100)
    assert plan.mm == "fma" and plan.path in ("persistent", "stepwise")
    assert plan.reason.startswith("the tensor-core (dot) kernel compiled for sm_90 asks for 256 KiB "
                                  "of shared memory per block, over this GPU's 227 KiB: CUDA-core (fma) "
                                  "kernel; ")
    fma = plan_recurrence(**{**args, "mm": "fma"}, device=h100)
    assert replace(plan, reason="") == replace(fma, reason="")
    # Within the limit, not measured, or a GPU whose limit is unknown: the kernel asked for runs.
    monkeypatch.setattr(rnn_plan, "measured_shared", lambda *a: 64 * 1024)
    assert plan_recurrence(**args, device=h100).mm == "dot"
    monkeypatch.setattr(rnn_plan, "measured_shared", lambda *a: None)
    assert plan_recurrence(**args, device=h100).mm == "dot"
    monkeypatch.setattr(rnn_plan, "measured_shared", lambda *a: 256 * 1024)
    assert plan_recurrence(**args, device=Device(132, capability=90)).mm == "dot"
    assert plan_recurrence(**args, device=h100, measured=False).mm == "dot"


def test_the_shipped_table_sends_the_large_gru_to_the_cuda_core_kernel_on_hopper():
    # The step-wise tensor-core GRU at hidden 2048 keeps 2 x 3 x 16 x 2048 x 2 bytes of operands in
    # shared memory, more than an H100 or H200 block may have.
    h200 = Device(132, capability=90, shared_per_block=227 * 1024)
    plan = plan_recurrence(hidden=2048, batch=4, gates=3, element_size=2, device=h200, mm="dot")
    assert plan.mm == "fma" and "shared memory per block" in plan.reason
    assert plan_recurrence(hidden=1024, batch=4, gates=1, element_size=2, device=h200, mm="dot").mm == "dot"


def test_a_persistent_cuda_core_kernel_is_preferred_to_a_step_wise_tensor_core_one(monkeypatch):
    h100 = Device(132, capability=90, shared_per_block=227 * 1024)
    args = dict(hidden=1024, batch=4, gates=3, element_size=2, device=h100)
    dot = plan_recurrence(**args, mm="dot", measured=False)
    fma = plan_recurrence(**args, mm="fma", measured=False)
    assert dot.path == fma.path == "persistent"
    # Only the tensor-core kernel spills at this shape.
    spills = {(90, 3, 2, "dot", 1024, dot.block_h, dot.num_warps): 72}
    monkeypatch.setattr(rnn_plan, "_measured", lambda: spills)
    monkeypatch.setattr(rnn_plan, "measured_shared", lambda *a: None)
    plan = plan_recurrence(**args, mm="dot")
    assert (plan.path, plan.mm) == ("persistent", "fma")
    assert plan.reason.startswith("persistent CUDA-core (fma) kernel, not the step-wise tensor-core one (the "
                                  "persistent kernel compiled for sm_90 keeps 72 bytes per thread")
    # Asked for step-wise, or both spill: the step-wise tensor-core kernel stays.
    assert plan_recurrence(**args, mm="dot", want="stepwise").mm == "dot"
    monkeypatch.setattr(rnn_plan, "_measured", lambda: {(90, 3, 2, mm, 1024, p.block_h, p.num_warps): 72
                                                         for mm, p in (("dot", dot), ("fma", fma))})
    assert (lambda p: (p.path, p.mm))(plan_recurrence(**args, mm="dot")) == ("stepwise", "dot")


def test_the_gpu_tests_expectations_for_mm_dot_on_hopper_follow_the_shipped_table():
    from tests.gpu.test_persistent_rnn_gpu import DOT_ON_HOPPER

    h200 = Device(132, capability=90, shared_per_block=227 * 1024)  # props.shared_memory_per_block_optin
    for (cell, hidden), (path, mm, why) in DOT_ON_HOPPER.items():
        plan = plan_recurrence(hidden=hidden, batch=4, gates=3 if cell == "gru" else 1, element_size=2,
                               device=h200, mm="dot")
        assert (plan.path, plan.mm) == (path, mm) and why in plan.reason, plan
