"""On a GPU: the compiled kernels at benchmark sizes, with a real multi-program grid barrier.

The CPU tests run the same kernels in Triton's interpreter with one program per persistent
launch; only here do 100+ programs meet at the barrier every step. The bounds are the
interpreter ones, loosened for T = 64 steps of accumulated rounding.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.gpu

BOUND = {torch.float32: 1e-5, torch.bfloat16: 6e-2, torch.float16: 1e-2}


def relerr(got, want) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


@pytest.fixture(autouse=True)
def exact_cudnn():
    """cuDNN in fp32 may use TF32; the float64 reference needs it not to."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("hidden", [1024, 2048])
@pytest.mark.parametrize("cell", ["rnn", "gru"])
def test_persistent_layer_matches_float64_at_minibatch_4(cell, hidden, dtype):
    from ddtrain.kernels.persistent_rnn import PersistentGRU, PersistentRNN

    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    ref = (nn.GRU if cell == "gru" else nn.RNN)(hidden, hidden).cuda().double()
    ours = (PersistentGRU if cell == "gru" else PersistentRNN)(hidden, hidden).cuda().to(dtype)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(64, 4, hidden, device="cuda", dtype=torch.float64)
    h0 = torch.randn(1, 4, hidden, device="cuda", dtype=torch.float64)
    dy = torch.randn(64, 4, hidden, device="cuda", dtype=torch.float64)
    out_ref, _ = ref(x, h0)
    grads_ref = torch.autograd.grad(out_ref, [*ref.parameters()], dy)
    out, _ = ours(x.to(dtype), h0.to(dtype))
    grads = torch.autograd.grad(out, [*ours.parameters()], dy.to(dtype))
    plan = ours.last_plan
    if cell == "gru" and hidden == 2048:
        # fp32: U's slice is over the register budget; 2-byte: the compiled kernel spills it
        # (kernel_resources.json), so the planner runs the step-wise kernel either way.
        assert plan.path == "stepwise", plan.reason
        assert ("on-chip budget" if dtype == torch.float32 else "outside its registers") in plan.reason
    else:
        assert plan.path == "persistent", plan.reason
    assert relerr(out, out_ref) < BOUND[dtype], (seed, plan)
    for name, g, g_ref in zip([n for n, _ in ours.named_parameters()], grads, grads_ref):
        assert relerr(g, g_ref) < BOUND[dtype], (seed, name, plan)


def test_stepwise_and_persistent_agree_and_the_barrier_never_times_out():
    from ddtrain.kernels import rnn_triton
    from ddtrain.kernels.persistent_rnn import device_info
    from ddtrain.kernels.rnn_plan import plan_recurrence

    dev = device_info(torch.device("cuda"))
    xw = torch.randn(256, 4, 3 * 1024, device="cuda", dtype=torch.bfloat16)
    h0 = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(3 * 1024, 1024, device="cuda", dtype=torch.bfloat16) / 32
    results = {}
    for want in ("persistent", "stepwise"):
        plan = plan_recurrence(hidden=1024, batch=4, gates=3, element_size=2, device=dev, want=want)
        hbuf, gates, sync = rnn_triton.recurrence_forward("gru", xw, h0, w, None, "tanh", plan, save=True)
        assert not rnn_triton.barrier_failed(sync), plan
        results[want] = hbuf.float()
    # Different tile widths (8 vs 16 units) may sum in a different order: agree to bf16 rounding.
    assert relerr(results["persistent"], results["stepwise"]) < 1e-2


# What the planner makes of mm=dot on a Hopper GPU (kernel_resources.json): the RNN stays on the
# tensor cores; the GRU at 1024 would be step-wise there (its persistent kernel spills), so the
# persistent CUDA-core kernel runs; the GRU at 2048 would ask for more shared memory than a block has.
DOT_ON_HOPPER = {("rnn", 1024): ("persistent", "dot", "persistent: "),
                 ("gru", 1024): ("persistent", "fma", "not the step-wise tensor-core one"),
                 ("gru", 2048): ("stepwise", "fma", "shared memory per block")}


@pytest.mark.parametrize("cell,hidden", list(DOT_ON_HOPPER))
def test_tensor_core_kernels_match_float64_or_hand_over_to_the_cuda_core_kernel(cell, hidden):
    """mm=dot keeps its operands in shared memory; where the compiled kernel asks for more than
    the GPU has, or would run step-wise, the planner runs mm=fma instead."""
    from ddtrain.kernels.persistent_rnn import PersistentGRU, PersistentRNN

    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    ref = (nn.GRU if cell == "gru" else nn.RNN)(hidden, hidden).cuda().double()
    ours = (PersistentGRU if cell == "gru" else PersistentRNN)(hidden, hidden, mm="dot").cuda().bfloat16()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(64, 4, hidden, device="cuda", dtype=torch.float64)
    h0 = torch.randn(1, 4, hidden, device="cuda", dtype=torch.float64)
    out_ref, _ = ref(x, h0)
    out, _ = ours(x.bfloat16(), h0.bfloat16())
    plan = ours.last_plan
    if torch.cuda.get_device_capability() == (9, 0):
        path, mm, why = DOT_ON_HOPPER[(cell, hidden)]
        assert (plan.path, plan.mm) == (path, mm) and why in plan.reason, plan
    elif plan.mm == "fma":
        assert "shared memory per block" in plan.reason or "not the step-wise" in plan.reason, plan.reason
    assert relerr(out, out_ref) < BOUND[torch.bfloat16], (seed, plan)
