"""Shard layout (pure), the optimizer check and the memory count of sharded data parallel."""

from __future__ import annotations

import pytest
import torch

from ddtrain.comm.buckets import plan_buckets
from ddtrain.comm.sharded import check_elementwise
from ddtrain.comm.shards import padded_size, pieces, shard_layout
from ddtrain.metrics.memory import state_bytes


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
def test_every_element_of_every_parameter_lies_in_exactly_one_ranks_shard(world):
    numels = [5, 17, 1, 64, 3, 30]
    plan = plan_buckets(numels, 4, cap_bytes=40 * 4, first_cap_bytes=20 * 4)
    seen = [torch.zeros(n, dtype=torch.int32) for n in numels]
    for rank in range(world):
        layout = shard_layout(plan, world, rank)
        for b, n in enumerate(plan.sizes):
            assert layout.padded[b] % world == 0 and n <= layout.padded[b] < n + world
        for pc in pieces(plan, layout):
            lo, hi = layout.own(pc.bucket)
            slot = plan.slots[pc.param]
            # The piece sits inside this rank's shard, at the place its slot puts it.
            assert 0 <= pc.offset and pc.offset + pc.numel <= hi - lo
            assert lo + pc.offset == slot.offset + pc.start
            seen[pc.param][pc.start:pc.start + pc.numel] += 1
    assert all(bool((s == 1).all()) for s in seen)


def test_padding_makes_equal_shards_and_a_rank_outside_the_world_is_refused():
    assert [padded_size(n, 3) for n in (1, 3, 4, 9)] == [3, 3, 6, 9]
    plan = plan_buckets([7], 4, 1e9, 1e9)
    assert shard_layout(plan, 3, 2).own(0) == (6, 9)
    with pytest.raises(ValueError, match="rank 3 outside a world of 3"):
        shard_layout(plan, 3, 3)


def test_an_optimizer_whose_update_is_not_elementwise_is_refused_by_name():
    p = [torch.nn.Parameter(torch.zeros(3))]
    for ok in (torch.optim.AdamW(p), torch.optim.SGD(p, lr=0.1, momentum=0.9), torch.optim.Adam(p)):
        check_elementwise(ok, "gradients")
    with pytest.raises(ValueError, match=r"comm.shard=optimizer .* LBFGS is not one of them; "
                                         r"fix: comm.shard=none"):
        check_elementwise(torch.optim.LBFGS(p), "optimizer")


class _Held:
    def __init__(self, held):
        self.held = held

    def state_tensors(self):
        return self.held


def test_memory_counts_each_storage_once_in_the_first_category_that_holds_it():
    bucket = torch.zeros(100)
    params = [torch.zeros(10), torch.zeros(20)]
    grads_in_bucket = [bucket[:10], bucket[10:30]]  # gradients as views of the bucket
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(4))], lr=0.1, momentum=0.9)
    opt.state[opt.param_groups[0]["params"][0]] = {"momentum_buffer": torch.zeros(4)}
    got = state_bytes(_Held({"params": params, "comm": [bucket], "grads": grads_in_bucket,
                             "hidden_comm_bytes": 8}), opt)
    assert got == {"param_bytes": 120, "grad_bytes": 0, "optimizer_bytes": 16, "comm_buffer_bytes": 408,
                   "state_bytes_per_worker": 544}
