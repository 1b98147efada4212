"""Where each gradient goes in the communication buffers. Pure: sizes in, layout out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Slot:
    bucket: int
    offset: int  # in elements, within the bucket's flat buffer
    numel: int


@dataclass(frozen=True)
class BucketPlan:
    members: tuple[tuple[int, ...], ...]  # per bucket: tensor indices, in fill order
    sizes: tuple[int, ...]  # per bucket: elements
    slots: tuple[Slot, ...]  # per tensor index

    def __len__(self) -> int:
        return len(self.members)


def plan_buckets(
    numels: Sequence[int],
    element_size: int,
    cap_bytes: float,
    first_cap_bytes: float,
    order: Sequence[int] | None = None,
) -> BucketPlan:
    """Pack tensors, taken in ``order``, greedily into buckets of at most ``cap_bytes``.

    ``order`` should be the order gradients become ready: reverse registration order is the
    usual proxy, since backward visits layers last to first. The first bucket is capped at
    ``first_cap_bytes`` (DDP uses 1 MiB) so that the first all-reduce starts after the last
    layers' gradients, instead of waiting for a full bucket. A tensor larger than the cap gets a
    bucket of its own; tensors are never split.
    """
    if order is None:
        order = list(reversed(range(len(numels))))
    if sorted(order) != list(range(len(numels))):
        raise ValueError("order must be a permutation of the tensor indices")

    members: list[list[int]] = []
    sizes: list[int] = []
    slots: dict[int, Slot] = {}
    current: list[int] = []
    filled = 0

    for idx in order:
        cap = first_cap_bytes if not members else cap_bytes
        n = numels[idx]
        if current and (filled + n) * element_size > cap:
            members.append(current)
            sizes.append(filled)
            current, filled = [], 0
        slots[idx] = Slot(len(members), filled, n)
        current.append(idx)
        filled += n
    if current:
        members.append(current)
        sizes.append(filled)

    return BucketPlan(
        members=tuple(tuple(m) for m in members),
        sizes=tuple(sizes),
        slots=tuple(slots[i] for i in range(len(numels))),
    )


def slot_views(buffers: Sequence, plan: BucketPlan) -> list:
    """Each tensor's slot in its bucket's flat buffer, by tensor index (views, no copies)."""
    return [buffers[s.bucket][s.offset:s.offset + s.numel] for s in plan.slots]
