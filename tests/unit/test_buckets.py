"""Bucket planning: a complete, non-overlapping layout that respects the caps, greedily."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ddtrain.comm.buckets import BucketPlan, MiB, Slot, plan_buckets


def check_plan(plan: BucketPlan, numels, element_size, cap_bytes, first_cap_bytes, order) -> None:
    """Every property a plan must have, derived from the contract in plan_buckets' docstring."""
    n = len(numels)
    assert len(plan.slots) == n
    assert len(plan.sizes) == len(plan.members) == len(plan)

    # Filling the buckets in turn visits the tensors exactly in `order`: each tensor lands in
    # exactly one bucket, and no bucket is empty.
    assert [i for m in plan.members for i in m] == list(order)
    assert all(plan.members)

    # Each bucket's slots follow its fill order back to back from offset 0: no overlap, no gap.
    for b, members in enumerate(plan.members):
        offset = 0
        for i in members:
            assert plan.slots[i] == Slot(bucket=b, offset=offset, numel=numels[i])
            offset += numels[i]
        assert plan.sizes[b] == offset

    # A bucket stays within its cap, unless it holds one tensor that alone is over the cap.
    caps = [first_cap_bytes] + [cap_bytes] * (len(plan) - 1)
    for members, size, cap in zip(plan.members, plan.sizes, caps):
        assert size * element_size <= cap or len(members) == 1

    # Greedy: a bucket is closed only because the next tensor would overflow it.
    for b in range(len(plan) - 1):
        next_tensor = plan.members[b + 1][0]
        assert (plan.sizes[b] + numels[next_tensor]) * element_size > caps[b]


# --------------------------------------------------------------------------- examples
def test_default_order_is_reverse_registration():
    numels = [3, 5, 7, 11]
    plan = plan_buckets(numels, element_size=4, cap_bytes=1e9, first_cap_bytes=1e9)
    assert plan.members == ((3, 2, 1, 0),)
    assert [plan.slots[i].offset for i in (3, 2, 1, 0)] == [0, 11, 18, 23]
    check_plan(plan, numels, 4, 1e9, 1e9, [3, 2, 1, 0])


def test_small_first_bucket_then_full_buckets():
    # fp32, 1 KiB first cap and 4 KiB caps: 256 and 1024 elements.
    numels = [512, 512, 512, 200, 100]
    plan = plan_buckets(numels, element_size=4, cap_bytes=4096, first_cap_bytes=1024)
    # Reverse order 4, 3, 2, 1, 0: 100 + 200 = 300 elements would exceed the 256-element first
    # bucket, so tensor 4 goes alone; then 200 + 512 fits 1024, 200 + 512 + 512 does not.
    assert plan.members == ((4,), (3, 2), (1, 0))
    assert plan.sizes == (100, 712, 1024)
    check_plan(plan, numels, 4, 4096, 1024, [4, 3, 2, 1, 0])


def test_oversized_tensor_gets_its_own_bucket():
    numels = [10, 5000, 10]
    plan = plan_buckets(numels, element_size=2, cap_bytes=1000, first_cap_bytes=1000)
    assert plan.members == ((2,), (1,), (0,))
    check_plan(plan, numels, 2, 1000, 1000, [2, 1, 0])


def test_explicit_order_is_followed():
    numels = [1, 2, 3, 4]
    order = [1, 3, 0, 2]
    plan = plan_buckets(numels, element_size=1, cap_bytes=5, first_cap_bytes=5, order=order)
    assert plan.members == ((1,), (3, 0), (2,))
    check_plan(plan, numels, 1, 5, 5, order)


def test_element_size_scales_the_cap():
    numels = [100] * 8
    fp32 = plan_buckets(numels, element_size=4, cap_bytes=800, first_cap_bytes=800)
    bf16 = plan_buckets(numels, element_size=2, cap_bytes=800, first_cap_bytes=800)
    assert set(fp32.sizes) == {200} and set(bf16.sizes) == {400}


def test_no_tensors_no_buckets():
    plan = plan_buckets([], element_size=4, cap_bytes=MiB, first_cap_bytes=MiB)
    assert len(plan) == 0 and plan.slots == ()


@pytest.mark.parametrize("order", [[0, 1], [0, 1, 1], [0, 1, 3], [2, 1, 0, 0]],
                         ids=["short", "repeat", "out-of-range", "long"])
def test_order_must_be_a_permutation(order):
    with pytest.raises(ValueError, match="permutation"):
        plan_buckets([1, 2, 3], element_size=4, cap_bytes=MiB, first_cap_bytes=MiB, order=order)


# --------------------------------------------------------------------------- property
@st.composite
def bucket_problems(draw):
    numels = draw(st.lists(st.integers(0, 5000), max_size=40))
    element_size = draw(st.sampled_from([1, 2, 4, 8]))
    cap = draw(st.integers(1, 40_000))
    first_cap = draw(st.integers(1, 40_000))
    if draw(st.booleans()):
        order = draw(st.permutations(range(len(numels))))
    else:
        order = None
    return numels, element_size, cap, first_cap, order


@settings(max_examples=300, deadline=None)
@given(bucket_problems())
def test_any_plan_is_complete_tight_and_within_caps(problem):
    numels, element_size, cap, first_cap, order = problem
    plan = plan_buckets(numels, element_size, cap, first_cap, order=order)
    expected_order = list(order) if order is not None else list(reversed(range(len(numels))))
    check_plan(plan, numels, element_size, cap, first_cap, expected_order)
