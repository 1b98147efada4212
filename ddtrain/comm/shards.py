"""Where each rank's shard lies in the flat buckets. Pure: a bucket plan in, ranges out.

Every bucket is padded to a multiple of the world size, so that it splits into N equal,
contiguous shards: rank r owns elements [r*s, (r+1)*s) of every bucket, s = padded size / N. A
parameter's slot may cross a shard boundary; the part of it inside this rank's shard is a
``Piece``, and the pieces are what the rank's optimizer steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from ddtrain.comm.buckets import BucketPlan

SHARD_MODES = ("none", "optimizer", "gradients")


@dataclass(frozen=True)
class Piece:
    param: int  # the tensor index in the plan
    bucket: int
    start: int  # first element of the piece within its parameter (flattened)
    numel: int
    offset: int  # first element of the piece within this rank's shard of the bucket


@dataclass(frozen=True)
class ShardLayout:
    world: int
    rank: int
    padded: tuple[int, ...]  # per bucket: elements after padding, a multiple of world

    def size(self, bucket: int) -> int:
        """Elements of one shard of ``bucket``."""
        return self.padded[bucket] // self.world

    def own(self, bucket: int) -> tuple[int, int]:
        """This rank's [lo, hi) within ``bucket``."""
        s = self.size(bucket)
        return self.rank * s, (self.rank + 1) * s


def padded_size(numel: int, world: int) -> int:
    return -(-numel // world) * world


def shard_layout(plan: BucketPlan, world: int, rank: int) -> ShardLayout:
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside a world of {world}")
    return ShardLayout(world, rank, tuple(padded_size(n, world) for n in plan.sizes))


def pieces(plan: BucketPlan, layout: ShardLayout) -> list[Piece]:
    """The parts of every parameter inside this rank's shards, in bucket then offset order."""
    out = []
    for bucket, members in enumerate(plan.members):
        lo, hi = layout.own(bucket)
        for idx in sorted(members, key=lambda i: plan.slots[i].offset):
            slot = plan.slots[idx]
            a, e = max(lo, slot.offset), min(hi, slot.offset + slot.numel)
            if a < e:
                out.append(Piece(idx, bucket, a - slot.offset, e - a, a - lo))
    return out
