"""The public names: loaded on first use, one context per process, a clean shutdown."""

from __future__ import annotations

import pytest
import torch

import ddtrain
from ddtrain.api import context


def test_the_public_names_are_the_documented_ones():
    assert set(ddtrain.__all__) == {"DataParallel", "init", "shard", "shutdown", "__version__"}
    assert ddtrain.DataParallel.__name__ == "DataParallel"
    assert ddtrain.shard.__name__ == "shard"
    with pytest.raises(AttributeError, match="no_such_name"):
        getattr(ddtrain, "no_such_name")  # noqa: B009 (the name is the point)


def test_init_returns_one_context_until_shutdown():
    ddtrain.shutdown()
    first = ddtrain.init(device="cpu")
    try:
        assert ddtrain.init(device="cpu", timeout_s=1.0) is first
        assert (first.rank, first.local_rank, first.world_size, first.is_main) == (0, 0, 1, True)
        assert first.device == torch.device("cpu")
    finally:
        ddtrain.shutdown()
    assert context.current() is None


def test_one_process_wraps_without_a_reducer():
    ddtrain.shutdown()
    try:
        model = ddtrain.DataParallel(torch.nn.Linear(3, 2))
        assert model._reducer is None
        x = torch.ones(4, 3)
        torch.testing.assert_close(model(x), model.module(x))
        with model.no_sync():
            model(x).sum().backward()
        assert model.module.weight.grad is not None
    finally:
        ddtrain.shutdown()
