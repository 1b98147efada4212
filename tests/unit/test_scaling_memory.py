"""The training-state model per shard mode, and the largest model that fits."""

from __future__ import annotations

import pytest

from ddtrain.scaling.memory import StateModel, optimizer_state_bytes

ADAMW = StateModel(param_bytes=4, comm_bytes=4, optimizer_bytes=8, bucket_bytes=25 * 2**20)


def test_bytes_per_parameter_under_each_mode():
    assert [optimizer_state_bytes(*args) for args in (("adamw",), ("sgd", 0.9), ("sgd",))] == [8, 4, 0]
    # fp32, AdamW, 2 workers: parameters 4, buckets 4 (the gradients are their views), moments 8.
    assert [ADAMW.per_param(s, 2) for s in ("none", "optimizer", "gradients")] == [16, 12, 10]
    assert ADAMW.per_param("gradients", 8) == pytest.approx(4 + 0.5 + 1)
    assert ADAMW.per_param("optimizer", 1) == 16  # one worker shards nothing
    # bf16 communication: the buckets halve, and the gradients need a cast copy.
    bf16 = StateModel(comm_bytes=2)
    assert bf16.per_param("none", 2) == 4 + 2 + 4 + 8 and bf16.per_param("gradients", 2) == 4 + 2 + 4 + 1
    # The gradients mode's two bucket buffers: fixed, and never more than the model's buckets.
    assert ADAMW.state_bytes("gradients", 2, 20_000_000) == 10 * 20_000_000 + 2 * 25 * 2**20
    assert ADAMW.state_bytes("gradients", 2, 1000) == 10 * 1000 + 4 * 1000
    # On Gloo each buffer has an inbox for the third and later ranks' parts of its shard:
    # (N-2)/N of it, nothing at 2 ranks.
    gloo = StateModel(optimizer_bytes=8, bucket_bytes=25 * 2**20, inboxes=True)
    assert gloo.state_bytes("gradients", 2, 20_000_000) == ADAMW.state_bytes("gradients", 2, 20_000_000)
    four = 7 * 20_000_000 + 1.5 * 2 * 25 * 2**20
    assert gloo.state_bytes("gradients", 4, 20_000_000) == pytest.approx(four)
    assert gloo.state_bytes("optimizer", 4, 1000) == ADAMW.state_bytes("optimizer", 4, 1000)
    assert gloo.largest_model(80e9, "gradients", 4) == int((80e9 - 1.5 * 2 * 25 * 2**20) / 7)


def test_the_largest_model_that_fits_grows_with_workers_only_when_sharded():
    memory = 80e9
    assert ADAMW.largest_model(memory, "none", 8) == ADAMW.largest_model(memory, "none", 1) == 5_000_000_000
    assert ADAMW.largest_model(memory, "optimizer", 8) == int(memory / 9)
    assert ADAMW.largest_model(memory, "gradients", 8) == int((memory - 2 * 25 * 2**20) / 5.5)
    assert ADAMW.largest_model(1e6, "gradients", 2) == 0  # the bucket buffers alone do not fit
