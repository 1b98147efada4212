"""The reducer's contract on real Gloo ranks: overlap, comm dtypes, accumulation, DDP baseline,
and parameters that get no gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from ddtrain.comm.reducer import GradReducer
from ddtrain.trainer import train
from tests.gloo.harness import run_ranks
from tests.gloo.test_equivalence import FP32, B, assert_params_close, reference
from tests.gloo.workloads import params_of, single_process, tiny, train_each, train_with_events


def test_first_bucket_launches_while_backward_is_still_running():
    cfg = tiny("mlp", batch=B, steps=2)
    rank0 = run_ranks(2, train_with_events, cfg)[0]
    events = rank0["events"]
    n_params, n_buckets = sum(rank0["buckets"]), len(rank0["buckets"])
    assert n_buckets >= 2
    step1 = events[: n_params + n_buckets]
    first_launch = step1.index(("launch", 0))
    last_grad = max(i for i, (kind, _) in enumerate(step1) if kind == "grad")
    # Gradients were still arriving after bucket 0's all-reduce was in flight.
    assert first_launch < last_grad, step1
    # Buckets launch in index order, each exactly once per step.
    launches = [idx for kind, idx in events if kind == "launch"]
    assert launches == list(range(n_buckets)) * 2


def test_gradient_accumulation_communicates_only_on_the_last_micro_step():
    world, accum, steps = 2, 3, 2
    cfg = tiny("gpt", batch=B, steps=steps, accum=accum)
    rank0 = run_ranks(world, train_with_events, cfg)[0]
    n_params, n_buckets = sum(rank0["buckets"]), len(rank0["buckets"])
    kinds = [kind for kind, _ in rank0["events"]]
    # Hooks act once per optimizer step, not once per micro-step.
    assert kinds.count("grad") == steps * n_params
    assert kinds.count("launch") == steps * n_buckets
    # Same parameters as one rank taking the whole global batch (world * B * accum) at once.
    ref_cfg = tiny("gpt", batch=world * B * accum, steps=steps)
    assert_params_close(rank0["params"], params_of(train(ref_cfg, single_process())), **FP32, what="accum")


# Low-precision communication rounds every gradient to 8 (bf16) or 11 (fp16) mantissa bits
# before the sum; after 3 SGD steps at lr 0.05 that moves parameters by well under 1e-3.
@pytest.mark.parametrize(
    "engine,dtype,tol",
    [
        ("ddtrain", "bf16", dict(rtol=2e-2, atol=2e-3)),
        ("ddtrain", "fp16", dict(rtol=2e-3, atol=3e-4)),
        ("torch_ddp", "fp32", FP32),
        ("torch_ddp", "bf16", dict(rtol=2e-2, atol=2e-3)),
    ],
)
def test_engines_and_comm_dtypes_match_the_reference(engine, dtype, tol):
    names = ["convnet", "gpt"]
    cfgs = {n: tiny(n, batch=B, engine=engine, dtype=dtype) for n in names}
    per_rank = run_ranks(2, train_each, cfgs)
    for n in names:
        assert_params_close(per_rank[0][n]["params"], reference(n, 2), **tol, what=f"{engine}/{dtype}/{n}")
        for key, value in per_rank[0][n]["params"].items():
            np.testing.assert_array_equal(per_rank[1][n]["params"][key], value)


class TwoBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 4)
        self.sometimes = nn.Linear(4, 4)

    def forward(self, x, use_branch: bool):
        y = self.used(x)
        return y + self.sometimes(x) if use_branch else y


def unused_on_rank1(ctx, comm_dtype: str) -> dict:
    torch.manual_seed(0)
    model = TwoBranch()
    reducer = GradReducer(model, world_size=ctx.world_size, bucket_mb=1e-4, first_bucket_mb=1e-4,
                          comm_dtype=comm_dtype)
    x = torch.ones(2, 4) * (ctx.rank + 1)
    model(x, use_branch=ctx.rank == 0).sum().backward()
    reducer.wait()  # must complete, not hang, although rank 1 never filled 'sometimes'
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


# bf16 too: the missing gradient then has to be created in the parameter's dtype, not the
# bucket's. The expected values (1 and 3) are exact in bf16.
@pytest.mark.parametrize("comm_dtype", ["fp32", "bf16"])
def test_a_parameter_without_gradient_on_one_rank_is_reduced_as_zero(comm_dtype):
    grads = run_ranks(2, unused_on_rank1, comm_dtype)
    # rank 0 alone produced gradients for 'sometimes' (x = 1): sum over batch of 2 -> 2 per
    # weight entry; the average with rank 1's zero is 1.
    np.testing.assert_allclose(grads[0]["sometimes.weight"], np.full((4, 4), 1.0))
    np.testing.assert_allclose(grads[0]["sometimes.bias"], np.full(4, 1.0))
    # 'used' got gradients on both ranks: x=1 gives 2, x=2 gives 4 per weight; mean 3.
    np.testing.assert_allclose(grads[0]["used.weight"], np.full((4, 4), 3.0))
    for key in grads[0]:
        np.testing.assert_array_equal(grads[0][key], grads[1][key])


def grads_held_before_and_after_wait(ctx, comm_dtype: str) -> dict:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    reducer = GradReducer(model, world_size=ctx.world_size, bucket_mb=1e-4, first_bucket_mb=1e-4,
                          comm_dtype=comm_dtype)
    model(torch.ones(2, 8) * (ctx.rank + 1)).sum().backward()
    during = [p.grad is not None for p in model.parameters()]
    reducer.wait()
    storages = {b.untyped_storage().data_ptr() for b in reducer.buffers}
    return {"during": during, "after": [p.grad is not None for p in model.parameters()],
            "bucket_views": [p.grad.untyped_storage().data_ptr() in storages for p in model.parameters()]}


# A gradient is dropped once it is in its bucket, so the next one reuses its memory (on CPU
# ranks, a gradient kept to the end of backward took fresh pages every step).
@pytest.mark.parametrize("comm_dtype", ["fp32", "bf16"])
def test_each_gradient_is_dropped_once_in_its_bucket_and_the_averaged_one_is_back_after_wait(comm_dtype):
    rank0 = run_ranks(2, grads_held_before_and_after_wait, comm_dtype)[0]
    assert rank0["during"] == [False] * 4
    assert rank0["after"] == [True] * 4
    # fp32: the gradient is the bucket's slice; bf16: cast back into a tensor of its own.
    assert rank0["bucket_views"] == [comm_dtype == "fp32"] * 4
