"""The reducer with one-launch packing (``comm.pack=triton``) against per-gradient packing
(``comm.pack=torch``) on 2 Gloo ranks: the averaged gradients must be identical, bit for bit.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1, set by
tests/conftest.py and inherited by the spawned ranks).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from ddtrain.comm.reducer import GradReducer
from ddtrain.kernels import packing
from ddtrain.trainer import train
from tests.gloo.harness import run_ranks
from tests.gloo.test_equivalence import B
from tests.gloo.workloads import params_of, tiny

pytestmark = pytest.mark.skipif(
    packing.triton_unavailable(torch.device("cpu")) is not None,
    reason=f"the Triton interpreter is off: {packing.triton_unavailable(torch.device('cpu'))}",
)


class Mixed(nn.Module):
    """Odd sizes, a one-element parameter, a branch rank 1 skips on the last micro-step (its slot
    then carries the earlier micro-step's p.grad) and one that only rank 0 ever uses (rank 1's
    p.grad stays None: a zero-filled slot)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(7, 33)
        self.out = nn.Linear(33, 5)
        self.gain = nn.Parameter(torch.randn(1))
        self.sometimes = nn.Linear(7, 5)
        self.rarely = nn.Linear(33, 5, bias=False)

    def forward(self, x, sometimes: bool, rarely: bool):
        h = torch.tanh(self.inp(x))
        y = self.out(h) * self.gain
        if sometimes:
            y = y + self.sometimes(x)
        if rarely:
            y = y + self.rarely(h)
        return (y ** 2).mean()


def two_steps(ctx, pack: str, comm_dtype: str, seed: int, fail_at: int | None = None) -> dict:
    torch.manual_seed(seed)  # rank 0's parameters win anyway (broadcast in GradReducer)
    model = Mixed()
    # 512-byte buckets: several of them, of one to a few tensors each.
    reducer = GradReducer(model, world_size=ctx.world_size, bucket_mb=1 / 2048, first_bucket_mb=1 / 4096,
                          comm_dtype=comm_dtype, pack=pack)
    if fail_at is not None:  # as if comm.pack=auto had picked Triton and its launch then failed
        reducer._pack_mode = "auto"
        real_pack = reducer._triton.pack

        def failing(bucket, scale):
            if bucket == fail_at:
                raise RuntimeError("PTX compilation failed (simulated)")
            real_pack(bucket, scale)

        reducer._triton.pack = failing
    gen = torch.Generator().manual_seed(seed + 1 + ctx.rank)  # different data on each rank
    grads = []
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        with reducer.no_sync():
            model(torch.randn(6, 7, generator=gen), sometimes=True, rarely=False).backward()
        last = model(torch.randn(6, 7, generator=gen), sometimes=ctx.rank == 0, rarely=ctx.rank == 0)
        last.backward()
        reducer.wait()
        grads.append({n: p.grad.float().numpy().copy() for n, p in model.named_parameters()})
    reducer.remove_hooks()
    return {"grads": grads, "describe": reducer.describe(), "buckets": len(reducer.plan)}


def both_packings(ctx, comm_dtype: str, seed: int) -> dict:
    return {pack: two_steps(ctx, pack, comm_dtype, seed) for pack in ("torch", "triton")}


@pytest.mark.parametrize("comm_dtype", ["fp32", "bf16"])
def test_one_launch_packing_gives_the_same_averages_as_per_gradient_packing(comm_dtype):
    seed = random.SystemRandom().randrange(2**31)
    ranks = run_ranks(2, both_packings, comm_dtype, seed)
    by_torch, by_triton = [r["torch"] for r in ranks], [r["triton"] for r in ranks]
    assert "packed by triton" in by_triton[0]["describe"]
    assert "packed by torch" in by_torch[0]["describe"]
    assert by_triton[0]["buckets"] >= 3
    for rank in range(2):
        for step, (want, got) in enumerate(zip(by_torch[rank]["grads"], by_triton[rank]["grads"])):
            for name in want:
                np.testing.assert_array_equal(got[name], want[name],
                                              err_msg=f"seed {seed}, rank {rank}, step {step}, {name}")
    # The averages are the same on both ranks, and the skipped parameters really were reduced
    # (rank 0's gradient / 2, not zero).
    for step in range(2):
        for name, value in by_triton[0]["grads"][step].items():
            np.testing.assert_array_equal(by_triton[1]["grads"][step][name], value)
            assert np.count_nonzero(value), f"{name} is all zero at step {step} (seed {seed})"


def torch_and_failing_triton(ctx, seed: int) -> dict:
    return {"torch": two_steps(ctx, "torch", "bf16", seed),
            "fallback": two_steps(ctx, "triton", "bf16", seed, fail_at=1)}


def test_auto_packing_falls_back_to_torch_copies_when_the_triton_launch_fails():
    """A kernel that fails on some GPU must not cost the run under comm.pack=auto: the bucket in
    flight and every gradient already counted are filled by torch, and the averages are the
    ones per-gradient packing gives."""
    seed = random.SystemRandom().randrange(2**31)
    ranks = run_ranks(2, torch_and_failing_triton, seed)
    for rank in range(2):
        assert "packed by torch" in ranks[rank]["fallback"]["describe"]
        pairs = zip(ranks[rank]["torch"]["grads"], ranks[rank]["fallback"]["grads"])
        for step, (want, got) in enumerate(pairs):
            for name in want:
                np.testing.assert_array_equal(got[name], want[name],
                                              err_msg=f"seed {seed}, rank {rank}, step {step}, {name}")


def train_each_packing(ctx, cfgs: dict) -> dict:
    out = {}
    for pack, cfg in cfgs.items():
        result = train(cfg, ctx)
        out[pack] = {"params": params_of(result), "packing": result.engine.reducer.packing}
    return out


def test_comm_pack_reaches_the_reducer_through_the_trainer():
    """``comm.pack=triton`` in the config: same parameters after 3 SGD steps as ``comm.pack=torch``."""
    cfgs = {pack: tiny("gpt", batch=B, dtype="bf16", pack=pack) for pack in ("torch", "triton")}
    rank0 = run_ranks(2, train_each_packing, cfgs)[0]
    assert [rank0[p]["packing"] for p in cfgs] == ["torch", "triton"]
    for key, value in rank0["torch"]["params"].items():
        np.testing.assert_array_equal(rank0["triton"]["params"][key], value, err_msg=key)
