"""Token files and image folders read through the shard loader, as the trainer reads them: the
sharding is exact, a resumed loader continues with exactly the next batches mid-epoch, and
worker processes change nothing (random crops included). Worker processes make this slow-tier."""

from __future__ import annotations

import pytest
import torch

from ddtrain.data.images import ImageFolderSet
from ddtrain.data.loader import ShardLoader
from ddtrain.data.tokens import TokenWindows
from tests.data_files import image_folder, token_dir


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    tokens = TokenWindows(token_dir(root / "tokens") / "train.bin", seq_len=16)
    images = ImageFolderSet(image_folder(root / "images", per_class=6), image_size=16, train=True)
    return {"tokens": tokens, "images": images}


def take(loader: ShardLoader, count: int) -> list:
    stream = loader.stream()
    try:
        return [next(stream) for _ in range(count)]
    finally:
        stream.close()


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", ["tokens", "images"])
def test_two_ranks_of_b_read_what_one_rank_of_2b_reads(sets, name):
    data = sets[name]
    one = take(ShardLoader(data, 4, seed=5, drop_last=False), 6)
    ranks = [take(ShardLoader(data, 2, rank=r, world_size=2, seed=5, drop_last=False), 6) for r in (0, 1)]
    for step in range(6):
        joined = [torch.cat([ranks[0][step][i], ranks[1][step][i]]) for i in (0, 1)]
        assert same(joined, one[step]), step  # random crops too: they follow the sample's position


@pytest.mark.parametrize("name", ["tokens", "images"])
def test_a_resumed_loader_gives_exactly_the_next_batches_mid_epoch(sets, name):
    data = sets[name]
    loader = ShardLoader(data, 3, seed=1, drop_last=False)
    whole = take(loader, 9)
    assert 0 < 5 * 3 % len(data)  # step 5 starts inside an epoch
    saved = ShardLoader(data, 3, seed=1, drop_last=False, start_step=5).state_dict()
    resumed = ShardLoader(data, 3, seed=1, drop_last=False)
    resumed.load_state_dict(saved)
    for a, b in zip(take(resumed, 4), whole[5:], strict=True):
        assert same(a, b)


@pytest.mark.parametrize("name", ["tokens", "images"])
def test_two_workers_give_the_batches_of_none(sets, name):
    data = sets[name]
    inline = take(ShardLoader(data, 4, seed=2, drop_last=False, workers=0), 5)
    workers = take(ShardLoader(data, 4, seed=2, drop_last=False, workers=2, prefetch=2), 5)
    for a, b in zip(inline, workers, strict=True):
        assert same(a, b)
    # The crops are random: another seed reads other crops of the same first images.
    if name == "images":
        other = take(ShardLoader(data, 4, seed=3, drop_last=False, shuffle=False), 1)[0]
        base = take(ShardLoader(data, 4, seed=2, drop_last=False, shuffle=False), 1)[0]
        assert torch.equal(other[1], base[1]) and not torch.equal(other[0], base[0])
