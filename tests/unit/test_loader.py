"""ShardLoader: exact shares of each global batch, epochs, resuming, workers, and ddtrain.shard."""

from __future__ import annotations

import gc
import multiprocessing

import pytest
import torch

import ddtrain
from ddtrain.api import context
from ddtrain.data.loader import ShardLoader, sample_seed
from ddtrain.data.sharding import sample_indices
from tests.assertions import one_line_error

N = 50  # with global batches of 12: 4 aligned steps per epoch, and a stream step across epochs


class Augmented(torch.utils.data.Dataset):
    """Sample i is (i + noise, i): the target names the sample, the noise comes from torch.rand."""

    def __init__(self, n: int = N):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.tensor([float(i)]) + torch.rand(1), i


class InMemory:
    """Batches itself, as ddtrain's in-memory Dataset does; reading one sample is a failure."""

    def __init__(self, n: int = N):
        self.x = torch.arange(n) * 10
        self.y = torch.arange(n)

    def __len__(self) -> int:
        return len(self.y)

    reads_whole_batches = True

    def batch(self, indices: torch.Tensor):
        return self.x[indices], self.y[indices]

    def __getitem__(self, i):
        raise AssertionError("the per-sample path read an in-memory data set")




def ranks(world_size: int, b: int, dataset=None, **kwargs) -> list[ShardLoader]:
    dataset = InMemory() if dataset is None else dataset
    return [ShardLoader(dataset, b, rank=r, world_size=world_size, **kwargs) for r in range(world_size)]


def take(batches, count: int) -> list:
    return [next(batches) for _ in range(count)]


# --------------------------------------------------------------------------- the order
@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_together_read_the_one_rank_batch(world_size, shuffle, drop_last):
    b = 4
    kwargs = dict(seed=7, shuffle=shuffle, drop_last=drop_last)
    many = ranks(world_size, b, **kwargs)
    one = ShardLoader(InMemory(), world_size * b, **kwargs)
    assert len(one) == len(many[0])
    for step in range(12):  # three epochs or more: aligned epochs restart, stream steps straddle
        assert torch.equal(torch.cat([r.indices(step) for r in many]), one.indices(step))
    streams = [r.stream() for r in many]
    for x, y in take(one.stream(), 12):
        parts = [next(s) for s in streams]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_without_drop_last_the_order_is_the_sharding_stream(world_size):
    data = InMemory()
    for rank, loader in enumerate(ranks(world_size, 4, data, seed=3, drop_last=False)):
        for step in range(15):  # stream slice [g*G, (g+1)*G), this rank's r-th run of 4 in it
            expected = sample_indices(step * 4 * world_size + rank * 4, 4, len(data), 3)
            assert torch.equal(loader.indices(step), expected)


def test_without_shuffle_epochs_are_in_order():
    assert torch.equal(sample_indices(48, 5, N, seed=9, shuffle=False), torch.tensor([48, 49, 0, 1, 2]))
    aligned = ShardLoader(InMemory(), 4, rank=1, world_size=3, shuffle=False)
    # 4 steps per epoch; step 5 is epoch 1's second step, whose rank-1 run starts at 12 + 4.
    assert torch.equal(aligned.indices(5), torch.arange(16, 20))
    stream = ShardLoader(InMemory(), 4, rank=1, world_size=3, shuffle=False, drop_last=False)
    assert torch.equal(stream.indices(4), torch.tensor([52, 53, 54, 55]) % N)


def test_aligned_steps_slice_the_epoch_permutation():
    loader = ShardLoader(InMemory(), 4, rank=2, world_size=3, seed=5)
    perm_1 = torch.randperm(N, generator=torch.Generator().manual_seed(5 + 1))
    # Step 6 is epoch 1, step 2 of 4: perm_1[2*12 + 2*4 : 2*12 + 3*4].
    assert torch.equal(loader.indices(6), perm_1[32:36])
    assert loader.epoch(6) == 1.5 and loader.global_batch_size == 12


@pytest.mark.parametrize("n", [50, 48])
def test_an_epoch_reads_each_sample_at_most_once(n):
    loader = ShardLoader(InMemory(n), 12, drop_last=True)
    assert len(loader) == 4
    for epoch in range(2):
        targets = torch.cat([y for _, y in loader])
        assert len(targets) == 48 and len(set(targets.tolist())) == 48
        if n == 48:
            assert torch.equal(targets.sort().values, torch.arange(48))
        assert loader.step == 4 * (epoch + 1)


def test_without_drop_last_an_epoch_reads_every_sample():
    loader = ShardLoader(InMemory(), 12, drop_last=False)
    assert len(loader) == 5
    targets = torch.cat([y for _, y in loader])
    # 5 steps of 12 are the whole first epoch and the first 10 samples of the second.
    assert torch.equal(targets[:N].sort().values, torch.arange(N))
    assert torch.equal(targets[N:], sample_indices(N, 10, N, seed=0))
    assert loader.epoch(loader.step) == 60 / N


def test_seed_decides_the_order_and_the_augmentation():
    def first_batches(seed):
        return take(ShardLoader(Augmented(), 6, seed=seed).stream(), 3)

    a, again, other = first_batches(1), first_batches(1), first_batches(2)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, again, strict=True))
    assert not torch.equal(torch.cat([y for _, y in a]), torch.cat([y for _, y in other]))
    # Same samples at the same stream positions under another seed: another augmentation.
    (xa, ya), (xb, yb) = [next(ShardLoader(Augmented(), 6, seed=s, shuffle=False).stream()) for s in (1, 2)]
    assert torch.equal(ya, torch.arange(6)) and torch.equal(ya, yb) and not torch.equal(xa, xb)
    assert sample_seed(1, 0) != sample_seed(0, 1)


def test_augmentation_is_the_same_at_any_world_size():
    (x, y), = take(ShardLoader(Augmented(), 8, seed=4).stream(), 1)
    halves = [next(r.stream()) for r in ranks(2, 4, Augmented(), seed=4)]
    assert torch.equal(torch.cat([h[0] for h in halves]), x)
    assert torch.equal(torch.cat([h[1] for h in halves]), y)


def test_the_callers_generator_is_left_as_it_was():
    state = torch.get_rng_state()
    take(ShardLoader(Augmented(), 4).stream(), 2)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_data_set_with_batch_is_read_a_batch_at_a_time():
    x, y = next(ShardLoader(InMemory(), 5, seed=2).stream())
    assert torch.equal(x, y * 10) and torch.equal(y, sample_indices(0, 5, N, seed=2))


def test_collate_fn_collates_samples():
    loader = ShardLoader(Augmented(), 3, shuffle=False, collate_fn=lambda samples: [i for _, i in samples])
    assert next(loader.stream()) == [0, 1, 2]


# --------------------------------------------------------------------------- resuming
@pytest.mark.parametrize("dataset", [InMemory, Augmented])
def test_resuming_mid_epoch_gives_exactly_the_next_batches(dataset):
    kwargs = dict(rank=1, world_size=2, seed=8)
    run = ShardLoader(dataset(), 6, **kwargs)  # 4 steps per epoch
    first_epoch = list(run)
    saved = None
    seen = []
    for batch in run:  # the second epoch, checkpointed after its second batch
        seen.append(batch)
        if len(seen) == 2:
            saved = run.state_dict()
    assert saved["step"] == 6 and run.step == 8 and len(first_epoch) == 4
    later = take(run.stream(), 3)
    expected = seen[2:] + later

    by_state = ShardLoader(dataset(), 6, **kwargs)
    by_state.load_state_dict(saved)
    by_start = ShardLoader(dataset(), 6, start_step=6, **kwargs)
    for resumed in (by_state, by_start):
        rest = list(resumed)
        assert len(rest) == 2 and resumed.step == 8
        got = rest + take(resumed.stream(), 3)
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            assert torch.equal(x, ex) and torch.equal(y, ey)


def test_resuming_at_another_world_size_with_the_same_global_batch():
    one = ShardLoader(Augmented(), 8, seed=3, drop_last=False)
    take(one.stream(), 7)
    saved = one.state_dict()
    x, y = next(one.stream())
    halves = ranks(2, 4, Augmented(), seed=3, drop_last=False)
    for half in halves:
        half.load_state_dict(saved)
    parts = [next(h.stream()) for h in halves]
    assert torch.equal(torch.cat([p[0] for p in parts]), x)
    assert torch.equal(torch.cat([p[1] for p in parts]), y)


@pytest.mark.parametrize(("key", "value", "fix"), [
    ("dataset_len", 49, "same data set"),
    ("global_batch", 16, "world size x data.batch_size"),
    ("shuffle", False, "shuffle"),
    ("drop_last", False, "drop_last"),
    ("seed", 1, "seed"),
])
def test_a_state_of_other_samples_is_refused(key, value, fix):
    loader = ShardLoader(InMemory(), 4, world_size=2, rank=0)
    state = {**loader.state_dict(), "step": 3, key: value}
    message = one_line_error(lambda: loader.load_state_dict(state))
    assert f"{key}={value}" in message and f"{key}={loader.state_dict()[key]}" in message
    assert fix in message and loader.step == 0
    assert "lacks seed" in one_line_error(lambda: loader.load_state_dict({"step": 3}))


# --------------------------------------------------------------------------- workers
def test_workers_give_the_batches_of_the_calling_process():
    kwargs = dict(rank=1, world_size=2, seed=6, drop_last=False)
    inline = ShardLoader(Augmented(), 4, start_step=3, **kwargs)
    pooled = ShardLoader(Augmented(), 4, start_step=3, workers=2, prefetch=1, **kwargs)
    expected = list(inline) + take(inline.stream(), 4)
    got = list(pooled)
    assert pooled.step == 7 and len(got) == 4
    got += take(pooled.stream(), 4)
    for (x, y), (ex, ey) in zip(got, expected, strict=True):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    # The in-memory path through workers too.
    x, y = next(ShardLoader(InMemory(), 4, workers=2).stream())
    assert torch.equal(x, y * 10)


def test_leaving_a_loop_early_stops_the_workers():
    loader = ShardLoader(Augmented(), 2, workers=2)
    for _ in loader:
        assert len(multiprocessing.active_children()) == 2
        break
    gc.collect()
    assert multiprocessing.active_children() == [] and loader.step == 1
    batches = loader.stream()
    next(batches)
    batches.close()
    assert multiprocessing.active_children() == [] and loader.step == 2


def test_pinning_in_the_calling_process_pins_every_tensor(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: pinned.append(t) or t, raising=True)
    loader = ShardLoader(Augmented(), 4, collate_fn=lambda s: {"x": [t for t, _ in s], "n": len(s)})
    loader.pin_memory = True  # as on a GPU host; the stand-in above needs none
    batch = next(loader.stream())
    assert len(pinned) == 4 and all(p is t for p, t in zip(pinned, batch["x"], strict=True))
    assert batch["n"] == 4


# --------------------------------------------------------------------------- arguments
def test_bad_arguments_are_refused():
    data = InMemory()
    assert "data.batch_size=0" in one_line_error(lambda: ShardLoader(data, 0))
    assert "rank=2" in one_line_error(lambda: ShardLoader(data, 4, rank=2, world_size=2))
    assert "world_size=0" in one_line_error(lambda: ShardLoader(data, 4, world_size=0))
    message = one_line_error(lambda: ShardLoader(data, 20, world_size=3))
    assert "50 samples" in message and "global batch of 60" in message and "lower data.batch_size" in message
    assert "empty" in one_line_error(lambda: ShardLoader(InMemory(0), 1))
    assert "workers=-1" in one_line_error(lambda: ShardLoader(data, 4, workers=-1))
    assert "prefetch=0" in one_line_error(lambda: ShardLoader(data, 4, prefetch=0))
    assert "start_step=-1" in one_line_error(lambda: ShardLoader(data, 4, start_step=-1))
    assert "drop collate_fn" in one_line_error(lambda: ShardLoader(data, 4, collate_fn=list))
    assert "step=-1" in one_line_error(lambda: ShardLoader(data, 4).indices(-1))


# --------------------------------------------------------------------------- ddtrain.shard
def test_shard_reads_the_rank_and_world_of_init():
    ddtrain.shutdown()
    try:
        loader = ddtrain.shard(InMemory(), 5, seed=2, start_step=3)  # starts the one-process job
        ctx = context.current()
        assert ctx is not None and (loader.rank, loader.world_size) == (0, 1)
        assert loader.pin_memory == (ctx.device.type == "cuda") and loader.step == 3
        assert torch.equal(loader.indices(3), ShardLoader(InMemory(), 5, seed=2).indices(3))
    finally:
        ddtrain.shutdown()
    try:
        ctx = ddtrain.init(device="cpu")
        loader = ddtrain.shard(Augmented(), 4, drop_last=False, shuffle=False, workers=0)
        assert context.current() is ctx and not loader.pin_memory
        x, y = next(loader.stream())
        assert torch.equal(y, torch.arange(4))
    finally:
        ddtrain.shutdown()


def test_a_batch_method_that_does_not_say_it_reads_whole_batches_is_left_alone():
    # Other libraries' data sets have a ``batch`` of their own (HuggingFace: batch(batch_size)).
    class Other:
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.tensor([i]), torch.tensor(i)

        def batch(self, batch_size):
            raise AssertionError("the loader called another library's batch()")

    x, y = next(iter(ShardLoader(Other(), 4, shuffle=False)))
    assert x.flatten().tolist() == [0, 1, 2, 3] and y.tolist() == [0, 1, 2, 3]
