"""The host-side capacity check that picks persistent, step-wise, cuDNN or the reference loop."""

from __future__ import annotations

import pytest

from ddtrain.kernels.rnn_plan import Device, plan_recurrence, slice_bytes

H100 = Device(sm_count=132)  # H100 SXM: 132 SMs, 64K 32-bit registers each
TITANX = Device(sm_count=24)  # Maxwell GM200, the GPU of Diamos et al. 2016


def plan(**kw):
    args = dict(hidden=1024, batch=4, gates=1, element_size=2, device=H100)
    args.update(kw)
    return plan_recurrence(**args)


def test_hidden_1024_on_an_h100_is_persistent_with_one_program_per_sm():
    p = plan()
    assert p.path == "persistent"
    assert p.programs <= H100.sm_count and p.programs * p.block_h >= 1024
    assert p.block_h == 8 and p.programs == 128  # the fewest rows that give every program an SM
    assert "persistent" in p.reason and "KiB" in p.reason


def test_every_unit_is_owned_by_exactly_one_program():
    for hidden in (1, 7, 512, 1000, 1152, 2048, 4096):
        p = plan(hidden=hidden, element_size=1)
        assert (p.programs - 1) * p.block_h < hidden <= p.programs * p.block_h, hidden


def test_a_gru_slice_too_big_for_the_register_file_falls_back_to_stepwise_and_says_why():
    # GRU, hidden 2048, fp32: 3 x 16 rows x 2048 x 4 B = 384 KiB per SM > 0.75 x 256 KiB.
    assert slice_bytes(2048, 3, 16, 4) == 384 * 1024
    p = plan(hidden=2048, gates=3, element_size=4)
    assert p.path == "stepwise"
    assert "384 KiB" in p.reason and "192 KiB" in p.reason and "step-wise" in p.reason
    # The same layer in bf16 fits: 192 KiB.
    assert plan(hidden=2048, gates=3, element_size=2).path == "persistent"


def test_fewer_sms_mean_bigger_slices_and_power_of_two_padding_is_counted():
    p = plan(hidden=512, element_size=4, device=TITANX)
    assert p.path == "persistent" and p.programs == 16 and p.block_h == 32
    # Diamos et al. held a 1152-wide fp32 RNN on a TitanX (24 SMs: 48 rows x 1152 x 4 B = 216 KiB
    # per SM). Triton tiles are powers of two, so here a program holds 64 x 2048 padded values
    # (512 KiB): registers are allocated for masked lanes too. A known cost of the Triton port.
    p = plan(hidden=1152, element_size=4, device=TITANX)
    assert p.path == "stepwise" and "512 KiB" in p.reason


def test_large_batches_go_to_cudnn_and_missing_triton_too():
    assert plan(batch=128).path == "cudnn"
    p = plan(triton_ok=False, triton_reason="ImportError: no triton")
    assert p.path == "cudnn" and "no triton" in p.reason


def test_cpu_runs_the_reference_loop():
    assert plan(device=None).path == "reference"
    assert plan(device=None, want="cudnn").path == "cudnn"  # torch's own module also runs on CPU


@pytest.mark.parametrize(
    "kw, error, message",
    [
        (dict(want="fast"), ValueError, "rnn path 'fast' is unknown"),
        (dict(device=None, want="persistent"), ValueError, "needs a CUDA GPU"),
        (dict(hidden=4096, gates=3, element_size=4, want="persistent"), ValueError,
         "persistent path impossible"),
        (dict(want="stepwise", triton_ok=False, triton_reason="x"), RuntimeError, "needs Triton"),
        (dict(hidden=0), ValueError, "must be positive"),
    ],
)
def test_impossible_requests_are_one_line_errors(kw, error, message):
    with pytest.raises(error, match=message) as info:
        plan(**kw)
    assert "\n" not in str(info.value)


def test_warps_grow_with_the_slice():
    small, big = plan(hidden=512), plan(hidden=2048, gates=3)
    assert 4 <= small.num_warps <= big.num_warps <= 16


def test_the_dot_mapping_needs_tiles_of_16_units():
    p = plan(mm="dot")
    assert p.mm == "dot" and p.block_h == 16 and p.programs == 64
    assert plan(mm="dot", want="stepwise", stepwise_block=4).block_h == 16
    with pytest.raises(ValueError, match="rnn mm 'wmma' is unknown"):
        plan(mm="wmma")
