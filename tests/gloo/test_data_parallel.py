"""``ddtrain.DataParallel`` in a user's own loop: N ranks with batch b end where one process
with batch N*b does, as torch DDP does; the first bucket is in flight before backward ends."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.gloo.harness import run_ranks
from tests.gloo.own_model import TiedNet, train_loop

B, STEPS = 4, 4
# fp32; the ranks' gradients are summed in another order than one process's: ulp-level
# differences, amplified a little by 4 SGD steps.
RTOL, ATOL = 1e-4, 1e-5


def assert_same_params(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=RTOL, atol=ATOL, err_msg=key)


@pytest.fixture(scope="module")
def one_process():
    return run_ranks(1, train_loop, "none", 2 * B, STEPS)[0]


@pytest.mark.parametrize("set_to_none", [True, False])
def test_two_ranks_equal_one_process_with_the_global_batch(one_process, set_to_none):
    ranks = run_ranks(2, train_loop, "ddtrain", B, STEPS, set_to_none)
    for rank in ranks:
        assert_same_params(rank["params"], one_process["params"])
    # The buffer counted this rank's forwards; rank 0's value was broadcast at wrap time.
    assert ranks[0]["params"]["calls"] == STEPS
    # The wrapper's state_dict is the module's: no "module." prefix, loadable into a bare model.
    assert ranks[0]["state_dict_keys"] == sorted(TiedNet().state_dict())


@pytest.mark.parametrize("shard", ["optimizer", "gradients"])
def test_sharded_with_the_optimizer_handed_over_and_clipping_equals_no_sharding(shard):
    """The loop is unchanged but for DataParallel(shard=, optimizer=) and model.clip_grad_norm_;
    TiedNet's tied weight and its branch without gradients on odd steps go through the shards."""
    for world in (2, 3):
        plain = run_ranks(world, train_loop, "ddtrain", B, STEPS, True, None, "none", 0.05)
        sharded = run_ranks(world, train_loop, "ddtrain", B, STEPS, True, None, shard, 0.05)
        for rank in sharded:
            assert_same_params(rank["params"], plain[0]["params"])
            for key, value in sharded[0]["params"].items():  # replicas identical
                np.testing.assert_array_equal(rank["params"][key], value, err_msg=key)


def test_torch_ddp_in_the_same_loop_agrees(one_process):
    ranks = run_ranks(2, train_loop, "ddp", B, STEPS)
    for rank in ranks:
        assert_same_params(rank["params"], one_process["params"])


def test_one_process_wrapped_adds_nothing(one_process):
    wrapped = run_ranks(1, train_loop, "ddtrain", 2 * B, STEPS)[0]
    for key, want in one_process["params"].items():
        np.testing.assert_array_equal(wrapped["params"][key], want, err_msg=key)


def overlap_events(ctx) -> list:
    events: list = []
    train_loop(ctx, "ddtrain", B, 1, events=events)
    return events


def test_the_first_bucket_is_in_flight_before_backward_ends():
    events = run_ranks(2, overlap_events)[0]
    launches = [i for i, (kind, _) in enumerate(events) if kind == "launch"]
    grads = [i for i, (kind, _) in enumerate(events) if kind == "grad"]
    assert len(launches) >= 2, events
    assert launches[0] < grads[-1], events  # gradients still arriving after bucket 0 was launched


def test_a_module_on_another_device_is_refused_with_the_fix():
    from ddtrain.api.data_parallel import DataParallel

    if torch.cuda.is_available():
        pytest.skip("needs a CPU-only process")  # the refusal compares with the rank's device
    model = TiedNet().to("meta")
    with pytest.raises(ValueError, match=r"module.to\(ddtrain.init\(\).device\)"):
        DataParallel(model)


def test_sharding_without_the_optimizer_or_an_unknown_mode_is_refused_with_the_fix():
    from ddtrain.api.data_parallel import DataParallel

    with pytest.raises(ValueError, match=r"shard='gradients' splits the optimizer's state .* fix: "
                                         r"DataParallel\(module, shard=\.\.\., optimizer="):
        DataParallel(TiedNet(), shard="gradients")
    with pytest.raises(ValueError, match="shard='zero3': choose one of none, optimizer, gradients"):
        DataParallel(TiedNet(), shard="zero3")
