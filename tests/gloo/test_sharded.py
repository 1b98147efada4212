"""Sharded data parallel (comm.shard=optimizer|gradients) on Gloo ranks, through ``train()``.

Equivalence: sharding changes where the arithmetic runs, not what it is. Each element's update
is computed once, on the rank that owns it, from the same averaged gradient, so the parameters
after K steps are those of comm.shard=none. Tolerance: rtol 1e-5, atol 1e-6 (fp32), which only
admits a reduce-scatter that sums in another order than the all-reduce (measured on Gloo, 3
steps: optimizer 0 everywhere; gradients 0 at N=2 and at most 1.2e-7, resnet, at N=3).
Replicas stay bitwise identical. With clipping the
gradient norm is a sum of the shards' squares, so the clip factor differs in the last bits
(fp32 communication, AdamW, 4 steps: max difference 4e-9). With bf16 communication a sum taken
in another order (the reduce-scatter at N=3), or such a last-bit difference in the parameters,
moves a gradient element by a bf16 rounding step, 2^-8 of it, and AdamW turns a near-zero
element's change into up to a whole step of lr. Measured with accumulation and clipping, lr
3e-3, 4 steps, over all elements: N=2 p99 1.5e-6, max 4.6e-5; N=3 gradients p99 3.3e-5, max
1.6e-3. So with bf16: 99% of the elements within 1e-4 (a thirtieth of one step of lr), and none
beyond lr x steps, the most AdamW can move an element.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ddtrain.ckpt import catalog
from ddtrain.ckpt.file import load
from ddtrain.config import OptimConfig
from ddtrain.models.gpt import GPTConfig
from ddtrain.scaling.memory import StateModel
from ddtrain.trainer import train
from tests.gloo.harness import run_ranks
from tests.gloo.workloads import MODELS, params_of, tiny, train_each

MODES = ("optimizer", "gradients")
EXACT = dict(rtol=1e-5, atol=1e-6)
ADAMW = OptimConfig(name="adamw", lr=3e-3, schedule="cosine", warmup_steps=2, grad_clip=0.5)


def assert_close(got: dict, want: dict, what: str, **tol) -> None:
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], err_msg=f"{what}: {key}", **tol)


def assert_replicas_identical(per_rank: list[dict], name: str) -> None:
    for other in per_rank[1:]:
        for key, value in per_rank[0][name]["params"].items():
            np.testing.assert_array_equal(other[name]["params"][key], value, err_msg=f"{name}: {key}")


def gpt_adamw(batch: int, steps: int = 4, **comm):
    cfg = tiny("gpt", batch=batch, steps=steps, **comm)
    return dataclasses.replace(cfg, optim=ADAMW, model=GPTConfig(layers=2, heads=2, dim=32))


# ----------------------------------------------------------------- per-rank functions
def train_and_count(ctx, cfgs):
    out = {}
    for name, cfg in cfgs.items():
        result = train(cfg, ctx)
        out[name] = {"params": params_of(result), "record": result.history[-1],
                     "describe": result.engine.describe() if hasattr(result.engine, "describe") else ""}
    return out


def train_runs(ctx, cfgs):
    """Train each config in turn (one may resume from another's checkpoint)."""
    out = []
    for cfg in cfgs:
        result = train(cfg, ctx)
        out.append({"params": params_of(result), "start": result.start_step,
                    "loss": [r["loss"] for r in result.history]})
    return out


# ----------------------------------------------------------------- tests
@pytest.mark.parametrize("world", [2, 3])
def test_every_model_sharded_ends_with_the_parameters_of_no_sharding(world):
    cfgs = {f"{name}/{mode}": tiny(name, batch=4, shard=mode) for name in MODELS for mode in ("none", *MODES)}
    per_rank = run_ranks(world, train_each, cfgs)
    for name in MODELS:
        want = per_rank[0][f"{name}/none"]["params"]
        for mode in MODES:
            key = f"{name}/{mode}"
            assert len(per_rank[0][key]["buckets"]) >= 2, key  # several buckets, so several shards each
            assert_replicas_identical(per_rank, key)
            assert_close(per_rank[0][key]["params"], want, f"{key} N={world}", **EXACT)
            assert per_rank[0][key]["loss"] == pytest.approx(per_rank[0][f"{name}/none"]["loss"], rel=1e-6)


@pytest.mark.parametrize("world", [2, 3])
def test_bf16_communication_accumulation_and_clipping_with_adamw(world):
    cfgs = {mode: gpt_adamw(batch=2, dtype="bf16", accum=2, shard=mode) for mode in ("none", *MODES)}
    per_rank = run_ranks(world, train_and_count, cfgs)
    steps = cfgs["none"].trainer.steps
    for mode in MODES:
        assert_replicas_identical(per_rank, mode)
        got, want = per_rank[0][mode]["params"], per_rank[0]["none"]["params"]
        diff = np.concatenate([np.abs(got[k] - want[k]).ravel() for k in want])
        assert diff.max() <= ADAMW.lr * steps, (mode, world, diff.max())
        assert np.quantile(diff, 0.99) <= 1e-4, (mode, world, np.quantile(diff, 0.99))
        # The clip's norm is the whole gradient's, summed across shards (bf16 sums: within 2^-9).
        got, want = per_rank[0][mode]["record"]["grad_norm"], per_rank[0]["none"]["record"]["grad_norm"]
        assert got == pytest.approx(want, rel=2e-3)


def test_the_training_state_per_rank_shrinks_with_each_mode():
    cfgs = {mode: gpt_adamw(batch=2, steps=1, shard=mode) for mode in ("none", *MODES)}
    per_rank = run_ranks(2, train_and_count, cfgs)
    mem = {mode: per_rank[0][mode]["record"] for mode in cfgs}
    params = mem["none"]["param_bytes"]
    # AdamW keeps two fp32 moments per parameter; sharded, each rank keeps about half of them.
    assert mem["none"]["optimizer_bytes"] == pytest.approx(2 * params, rel=0.01)
    for mode in MODES:
        assert mem[mode]["optimizer_bytes"] == pytest.approx(params, rel=0.05), mode
        assert mem[mode]["param_bytes"] == pytest.approx(params, rel=0.01), mode  # padding only
    # optimizer: the averaged gradient is the full bucket; gradients: only the shard is kept.
    assert mem["optimizer"]["comm_buffer_bytes"] == pytest.approx(params, rel=0.01)
    assert mem["gradients"]["grad_bytes"] == pytest.approx(params / 2, rel=0.05)
    # The study's memory model (scaling/memory.py) predicts the counts, padding aside; its two
    # bucket buffers (and on Gloo their inboxes) are taken at the cap, an upper bound.
    state = StateModel(optimizer_bytes=8, bucket_bytes=cfgs["none"].comm.bucket_mb * 2**20, inboxes=True)
    for mode in ("none", *MODES):
        predicted = state.state_bytes(mode, 2, params // 4)
        assert mem[mode]["state_bytes_per_worker"] == pytest.approx(predicted, rel=0.05), mode
        assert mem[mode]["state_bytes_per_worker"] <= predicted * 1.01, mode
    totals = [mem[m]["state_bytes_per_worker"] for m in ("none", *MODES)]
    assert totals[0] > totals[1] > totals[2], totals
    assert all(mem[m]["peak_memory_bytes"] > 0 for m in mem)
    assert "shard=gradients" in per_rank[0]["gradients"]["describe"]


def test_a_sharded_checkpoint_is_the_unsharded_format_and_resumes_across_modes_and_world_sizes(tmp_path):
    """Global batch 12 throughout: 2 ranks x 6, or 3 ranks x 4."""
    def at(directory, world, mode, steps):
        cfg = gpt_adamw(batch=12 // world, steps=steps, shard=mode)
        t = dataclasses.replace(cfg.trainer, checkpoint=True, ckpt_dir=str(directory), ckpt_every=0)
        return dataclasses.replace(cfg, trainer=t)

    def copy_newest(source, directory):
        directory.mkdir()
        newest = catalog.list_checkpoints(source)[0][1]
        (directory / newest.name).write_bytes(newest.read_bytes())
        return directory

    run_ranks(2, train_runs, [at(tmp_path / "plain", 2, "none", 3)])
    run_ranks(2, train_runs, [at(tmp_path / "sharded", 2, "gradients", 3)])
    plain = load(catalog.list_checkpoints(tmp_path / "plain")[0][1])
    sharded = load(catalog.list_checkpoints(tmp_path / "sharded")[0][1])
    assert plain["optimizer"]["param_groups"] == sharded["optimizer"]["param_groups"]
    assert plain["optimizer"]["state"].keys() == sharded["optimizer"]["state"].keys()
    for i, st in plain["optimizer"]["state"].items():
        assert st.keys() == sharded["optimizer"]["state"][i].keys()
        for k, v in st.items():
            torch.testing.assert_close(sharded["optimizer"]["state"][i][k], v, **EXACT, msg=f"state {i} {k}")
    for k, v in plain["model"].items():
        torch.testing.assert_close(sharded["model"][k], v, **EXACT)

    # The reference: the unsharded run continued on its own 2 ranks.
    reference = copy_newest(tmp_path / "plain", tmp_path / "ref")
    want = run_ranks(2, train_runs, [at(reference, 2, "none", 5)])[0][0]
    # Unsharded 2 ranks' checkpoint -> sharded on 3 ranks; sharded 2 ranks' -> unsharded on 3.
    for source, mode in (("plain", "optimizer"), ("sharded", "none"), ("sharded", "gradients")):
        directory = copy_newest(tmp_path / source, tmp_path / f"{source}-to-{mode}")
        got = run_ranks(3, train_runs, [at(directory, 3, mode, 5)])[0][0]
        assert got["start"] == 3 and len(got["loss"]) == 2
        # Another world size sums in another order: close, not bit for bit.
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4), (source, mode)
        assert_close(got["params"], want["params"], f"{source} -> {mode} on 3 ranks", rtol=1e-3, atol=1e-5)
