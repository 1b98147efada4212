"""Checkpoints, resume and the per-step agreement on 2 Gloo ranks, through ``train()``.

An interrupted-and-resumed run must produce the uninterrupted run's loss sequence exactly (same
world size, CPU), including the RNG streams (the GPT here uses dropout) and the optimizer and
schedule state (AdamW with warm-up + cosine). Non-finite gradients, divergence and a replica
mismatch must stop or skip on every rank alike.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ddtrain.ckpt import catalog
from ddtrain.config import OptimConfig, TrainConfig
from ddtrain.data import build_dataset
from ddtrain.errors import JobError
from ddtrain.fault.signals import StopRequest
from ddtrain.models.gpt import GPTConfig
from ddtrain.registry import input_kind
from ddtrain.trainer import train
from tests.gloo.harness import run_ranks
from tests.gloo.workloads import params_of, single_process, tiny

ADAMW = OptimConfig(name="adamw", lr=3e-3, schedule="cosine", warmup_steps=2)
STEPS = 8


def gpt_cfg(ckpt_dir=None, *, batch=4, steps=STEPS, **trainer) -> TrainConfig:
    cfg = tiny("gpt", batch=batch, steps=steps)
    cfg = dataclasses.replace(cfg, model=GPTConfig(layers=2, heads=2, dim=32, dropout=0.1), optim=ADAMW)
    t = dataclasses.replace(cfg.trainer, checkpoint=ckpt_dir is not None, ckpt_dir=ckpt_dir,
                            ckpt_every=0, **trainer)
    return dataclasses.replace(cfg, trainer=t)


def losses(result) -> list[float]:
    return [r["loss"] for r in result.history]


# ----------------------------------------------------------------- per-rank functions
def uninterrupted(ctx, cfg):
    result = train(cfg, ctx)
    return {"loss": losses(result), "params": params_of(result)}


def interrupted_then_resumed(ctx, cfg, stop_at: int):
    """A stop signal arrives during step ``stop_at``: every rank stops after it with a
    checkpoint; a second call resumes from it (trainer.resume=auto)."""
    stop = StopRequest()

    def signal_during_next_step(step, rep):
        if step == stop_at - 1:
            stop.request("SIGTERM")

    first = train(cfg, ctx, stop=stop, on_step=signal_during_next_step)
    second = train(cfg, ctx)
    return {"first": losses(first), "second": losses(second), "start": second.start_step,
            "stopped_by": first.stopped_by, "params": params_of(second)}


def resume_only(ctx, cfg):
    try:
        result = train(cfg, ctx)
    except JobError as e:
        return {"error": str(e), "exit_code": e.exit_code}
    return {"loss": losses(result), "start": result.start_step}


def train_or_error(ctx, cfgs, on_step=None, dataset_fn=None):
    cfg = cfgs[ctx.rank] if isinstance(cfgs, list) else cfgs
    dataset = dataset_fn(cfg, ctx.rank) if dataset_fn else None
    try:
        result = train(cfg, ctx, dataset=dataset, on_step=on_step)
    except JobError as e:
        return {"error": str(e)}
    return {"params": params_of(result), "history": result.history}


class NaNOnce:
    """The data set, except that rank ``rank``'s ``nth`` batch is all NaN."""

    def __init__(self, base, rank: int, my_rank: int, nth: int):
        self.base, self.spec = base, base.spec
        self.poison = rank == my_rank
        self.nth, self.calls = nth, 0

    def __len__(self):
        return len(self.base)

    reads_whole_batches = True

    def batch(self, indices):
        x, y = self.base.batch(indices)
        self.calls += 1
        if self.poison and self.calls == self.nth:
            x = torch.full_like(x, float("nan"))
        return x, y


def nan_on_rank1_step3(cfg, my_rank):
    base = build_dataset(cfg.data, input_kind(cfg.model.name, cfg.data.name), cfg.seed)
    return NaNOnce(base, 1, my_rank, 3)


def perturb_rank1_after_step3(step, rep):
    if step == 3 and torch.distributed.get_rank() == 1:
        with torch.no_grad():
            next(rep.model.parameters()).view(-1)[0] += 1e-3


# ----------------------------------------------------------------- tests
def test_resume_continues_the_uninterrupted_loss_curve_exactly(tmp_path):
    reference = run_ranks(2, uninterrupted, gpt_cfg())
    resumed = run_ranks(2, interrupted_then_resumed, gpt_cfg(str(tmp_path)), 3)
    for rank in (0, 1):
        ref, got = reference[rank], resumed[rank]
        assert got["stopped_by"] == "SIGTERM" and got["start"] == 3
        assert len(got["first"]) == 3 and len(got["second"]) == STEPS - 3
        assert got["first"] + got["second"] == ref["loss"]  # exact, not approximately
        for name, value in ref["params"].items():
            np.testing.assert_array_equal(got["params"][name], value, err_msg=name)
    assert [s for s, _ in catalog.list_checkpoints(tmp_path)] == [STEPS, 3]


def test_resume_is_exact_without_a_process_group_too(tmp_path):
    ctx = single_process()
    reference = uninterrupted(ctx, gpt_cfg(batch=8))
    resumed = interrupted_then_resumed(ctx, gpt_cfg(str(tmp_path), batch=8), 5)
    assert resumed["first"] + resumed["second"] == reference["loss"]


def test_resume_on_another_world_size_with_the_same_global_batch(tmp_path):
    """2 ranks x 4 stop after step 3; 1 rank x 8 continues. Same samples, other summation
    order: close, not bit-identical (the model has no dropout, so RNG does not enter)."""
    cfg2 = dataclasses.replace(gpt_cfg(str(tmp_path)), model=GPTConfig(layers=2, heads=2, dim=32))
    reference = run_ranks(2, uninterrupted, dataclasses.replace(cfg2, trainer=dataclasses.replace(
        cfg2.trainer, checkpoint=False)))[0]["loss"]
    run_ranks(2, interrupted_then_resumed, cfg2, 3)  # leaves step 8 behind; keep only step 3
    (tmp_path / "step-00000008.ckpt").unlink()
    cfg1 = dataclasses.replace(cfg2, data=dataclasses.replace(cfg2.data, batch_size=8))
    (got,) = run_ranks(1, resume_only, cfg1)
    assert got["start"] == 3
    np.testing.assert_allclose(got["loss"], reference[3:], rtol=1e-4)


def test_resume_with_another_global_batch_is_refused_with_the_reason(tmp_path):
    cfg2 = gpt_cfg(str(tmp_path))
    run_ranks(2, interrupted_then_resumed, cfg2, 3)
    (got,) = run_ranks(1, resume_only, cfg2)  # 1 x 4 = 4 samples per step, was 2 x 4 = 8
    assert got["exit_code"] == 2
    assert "global batch of 8 (2 ranks x data.batch_size 4 x trainer.grad_accum 1)" in got["error"]
    assert "this run has 4 (1 x 4 x 1)" in got["error"]
    assert "ranks x batch x accum = 8" in got["error"]


@pytest.mark.parametrize("policy", ["skip", "stop"])
def test_a_nan_on_one_rank_is_handled_alike_on_every_rank(policy):
    cfg = tiny("mlp", batch=8, steps=5)
    cfg = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, on_nonfinite=policy))
    out = run_ranks(2, train_or_error, cfg, None, nan_on_rank1_step3)
    if policy == "stop":
        assert out[0]["error"] == out[1]["error"]
        assert out[0]["error"].startswith("non-finite gradient at step 3 (norm nan, first in ")
        return
    for rank in (0, 1):
        history = out[rank]["history"]
        assert [r["skipped_steps"] for r in history] == [0, 0, 1, 1, 1]
        assert math.isnan(history[2]["grad_norm"]) and math.isfinite(history[3]["loss"])
        assert all(np.isfinite(v).all() for v in out[rank]["params"].values())
    for name, value in out[0]["params"].items():
        np.testing.assert_array_equal(out[1]["params"][name], value, err_msg=name)


def test_divergence_stops_every_rank_before_it_is_checkpointed(tmp_path):
    cfg = tiny("mlp", batch=8, steps=6)
    t = dataclasses.replace(cfg.trainer, checkpoint=True, ckpt_dir=str(tmp_path), ckpt_every=1, ckpt_keep=10)
    cfg = dataclasses.replace(cfg, trainer=t, comm=dataclasses.replace(cfg.comm, verify_every=2))
    out = run_ranks(2, train_or_error, cfg, perturb_rank1_after_step3)
    assert out[0]["error"] == out[1]["error"]
    assert out[0]["error"].startswith("replicas diverged at step 4: rank 1 differs from rank 0 in 1 of ")
    assert [s for s, _ in catalog.list_checkpoints(tmp_path)] == [3, 2, 1]


def test_a_replica_mismatch_at_start_stops_every_rank_with_one_message():
    cfg = tiny("mlp", batch=8, steps=2)
    other = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=0.5))
    out = run_ranks(2, train_or_error, [cfg, other])
    assert out[0]["error"] == out[1]["error"]
    assert out[0]["error"].startswith("replica mismatch at start-up, rank 1 vs rank 0: config key optim.lr "
                                      "is 0.05 on rank 0 but 0.5 on rank 1")


def test_a_time_based_checkpoint_is_taken_after_the_same_step_on_every_rank(tmp_path):
    """ckpt_every=0 and a 60 us interval: rank 0's clock asks for a save after every step, through
    the step's agreement, so every step is checkpointed (a collective: a rank that saved alone
    would hang the gather)."""
    cfg = tiny("mlp", batch=8, steps=4)
    t = dataclasses.replace(cfg.trainer, checkpoint=True, ckpt_dir=str(tmp_path), ckpt_every=0,
                            ckpt_every_min=1e-6, ckpt_keep=10)
    out = run_ranks(2, train_or_error, dataclasses.replace(cfg, trainer=t))
    assert "error" not in out[0] and "error" not in out[1]
    assert [s for s, _ in catalog.list_checkpoints(tmp_path)] == [4, 3, 2, 1]
