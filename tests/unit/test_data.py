"""The data layer: exact sharding, and each data set's shapes, determinism and signal."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from ddtrain.data import DataSpec, build_dataset, sample_indices, speech
from ddtrain.data.chars import CharsData
from ddtrain.data.digits import DigitsData
from ddtrain.data.loader import ShardLoader
from ddtrain.data.sharding import _epoch_permutation
from ddtrain.data.speech import SpeechData
from ddtrain.data.synthetic import SyntheticData
from tests.assertions import one_line_error


def stream(data, batch_size: int, rank: int, world_size: int, seed: int) -> ShardLoader:
    """This rank's share of the endless stream of global micro-batches, as the trainer reads it."""
    return ShardLoader(data, batch_size, rank=rank, world_size=world_size, seed=seed, drop_last=False)


# Small enough to build in milliseconds; 50 samples with global batches of 12 put a batch
# across the first epoch boundary (positions 48..59).
SMALL_IMAGES = SyntheticData(samples=50, image_size=4, channels=1, batch_size=4)


# --------------------------------------------------------------------------- sharding
def test_sample_indices_is_the_concatenation_of_epoch_permutations():
    n, seed = 7, 3
    stream = torch.cat(
        [torch.randperm(n, generator=torch.Generator().manual_seed(seed + e)) for e in range(4)]
    )
    for position, count in [(0, 7), (5, 4), (2, 19), (14, 0), (0, 28)]:
        assert torch.equal(sample_indices(position, count, n, seed), stream[position : position + count])
    assert sample_indices(3, 4, n, seed).dtype == torch.int64


def test_each_epoch_is_a_permutation():
    n = 37
    for epoch in range(3):
        indices = sample_indices(epoch * n, n, n, seed=5)
        assert torch.equal(indices.sort().values, torch.arange(n))


def test_seed_decides_the_order():
    assert torch.equal(sample_indices(0, 100, 100, seed=1), sample_indices(0, 100, 100, seed=1))
    assert not torch.equal(sample_indices(0, 100, 100, seed=1), sample_indices(0, 100, 100, seed=2))
    # Consecutive epochs differ too (epoch e uses seed + e).
    assert not torch.equal(sample_indices(0, 100, 100, seed=1), sample_indices(100, 100, 100, seed=1))


def test_result_does_not_alias_the_cache():
    before = _epoch_permutation(10, 0, 0).clone()
    sample_indices(0, 10, 10, 0).zero_()
    assert torch.equal(_epoch_permutation(10, 0, 0), before)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_ranks_together_read_the_one_rank_batch(world_size):
    data = build_dataset(SMALL_IMAGES, "image", seed=0)
    b = 4
    ranks = [stream(data, b, rank, world_size, seed=11) for rank in range(world_size)]
    single = stream(data, world_size * b, 0, 1, seed=11)
    crossed_epoch = False
    for step in range(15):  # 15 global batches of 4, 8 or 12: each size crosses an epoch end
        indices = torch.cat([r.indices(step) for r in ranks])
        assert torch.equal(indices, single.indices(step))
        xs, ys = zip(*(r.batch_at(step) for r in ranks), strict=True)
        x, y = single.batch_at(step)
        assert torch.equal(torch.cat(xs), x) and torch.equal(torch.cat(ys), y)
        first, last = single.position(step), single.position(step) + single.batch_size - 1
        crossed_epoch |= first // len(data) != last // len(data)
    assert crossed_epoch


def test_batches_cross_an_epoch_boundary_exactly():
    data = build_dataset(SMALL_IMAGES, "image", seed=0)
    single = stream(data, 12, 0, 1, seed=4)
    # Global batch 4 covers positions 48..59: the last 2 of epoch 0, then the first 10 of epoch 1.
    expected = torch.cat([_epoch_permutation(50, 4, 0)[48:], _epoch_permutation(50, 4, 1)[:10]])
    assert torch.equal(single.indices(4), expected)


def test_a_batch_depends_only_on_the_micro_step():
    data = build_dataset(SMALL_IMAGES, "image", seed=0)
    a = stream(data, 4, 1, 2, seed=0)
    b = stream(data, 4, 1, 2, seed=0)
    forward = [a.indices(k) for k in range(8)]
    backward = [b.indices(k) for k in reversed(range(8))][::-1]
    assert all(torch.equal(f, g) for f, g in zip(forward, backward, strict=True))
    assert a.position(3) == 3 * 8 + 4


def test_the_stream_rejects_bad_arguments():
    data = build_dataset(SMALL_IMAGES, "image", seed=0)
    assert "global batch" in one_line_error(lambda: stream(data, 20, 0, 3, seed=0))
    one_line_error(lambda: stream(data, 4, 2, 2, seed=0))
    one_line_error(lambda: stream(data, 0, 0, 1, seed=0))


# --------------------------------------------------------------------------- synthetic
def test_synthetic_images_shapes_and_determinism():
    cfg = SyntheticData(samples=512, image_size=4, channels=3, num_classes=10, batch_size=8)
    data = build_dataset(cfg, "image", seed=0)
    assert len(data) == 512
    assert data.x.shape == (512, 3, 4, 4) and data.x.dtype == torch.float32
    assert data.y.shape == (512,) and data.y.dtype == torch.int64
    assert 0 <= data.y.min() and data.y.max() < 10
    assert abs(data.x.mean().item()) < 0.1 and abs(data.x.std().item() - 1) < 0.1
    assert data.spec == DataSpec(kind="image", channels=3, image_size=4, num_classes=10)
    again = build_dataset(cfg, "image", seed=0)
    assert torch.equal(data.x, again.x) and torch.equal(data.y, again.y)
    assert not torch.equal(data.x, build_dataset(cfg, "image", seed=1).x)


def test_synthetic_image_labels_are_learnable():
    cfg = SyntheticData(samples=1000, image_size=4, channels=3, num_classes=10, batch_size=8)
    data = build_dataset(cfg, "image", seed=0)
    counts = torch.bincount(data.y, minlength=10)
    assert (counts > 0).all() and counts.max() < 0.3 * len(data)  # no class dominates
    # A least-squares linear fit to the one-hot labels beats chance (10%) by far.
    features = torch.cat([data.x.flatten(1), torch.ones(len(data), 1)], dim=1).double()
    weights = torch.linalg.lstsq(features, torch.eye(10, dtype=torch.float64)[data.y]).solution
    accuracy = ((features @ weights).argmax(1) == data.y).double().mean().item()
    assert accuracy > 0.5


def test_synthetic_images_do_not_depend_on_the_sample_count():
    small, large = (build_dataset(dataclasses.replace(SMALL_IMAGES, samples=n), "image", seed=3)
                    for n in (50, 80))
    assert torch.equal(small.x, large.x[:50]) and torch.equal(small.y, large.y[:50])


def test_synthetic_tokens_shapes_and_determinism():
    cfg = SyntheticData(samples=256, seq_len=16, vocab_size=32, batch_size=8)
    data = build_dataset(cfg, "tokens", seed=0)
    assert data.x.shape == data.y.shape == (256, 16)
    assert data.x.dtype == data.y.dtype == torch.int64
    assert 0 <= data.x.min() and data.x.max() < 32 and data.y.max() < 32
    assert torch.equal(data.x[:, 1:], data.y[:, :-1])  # y is x shifted by one
    assert data.spec == DataSpec(kind="tokens", seq_len=16, vocab_size=32)
    again = build_dataset(cfg, "tokens", seed=0)
    assert torch.equal(data.x, again.x) and torch.equal(data.y, again.y)
    assert not torch.equal(data.x, build_dataset(cfg, "tokens", seed=1).x)


def test_synthetic_token_transitions_are_not_uniform():
    vocab = 64
    data = build_dataset(SyntheticData(samples=512, seq_len=32, vocab_size=vocab), "tokens", seed=0)
    pairs = torch.bincount(data.x.flatten() * vocab + data.y.flatten(), minlength=vocab * vocab)
    counts = pairs.reshape(vocab, vocab).double()
    assert (counts.sum(0) > 0).all()  # every symbol is reached, not just drawn as a first token
    p = counts / counts.sum()
    conditional = p / p.sum(1, keepdim=True)
    entropy = -(p * conditional.clamp_min(1e-12).log()).sum().item()  # H(next | previous), nats
    assert entropy < 0.5 * math.log(vocab)


# --------------------------------------------------------------------------- speech
SPEECH = SpeechData(samples=512, seq_len=32, features=32, num_classes=16, batch_size=4)


def runs(labels: torch.Tensor) -> list[tuple[int, int, int]]:
    """(start, end, class) of each run of equal labels in one utterance."""
    change = torch.nonzero(labels[1:] != labels[:-1]).flatten() + 1
    bounds = [0, *change.tolist(), len(labels)]
    return [(a, b, int(labels[a])) for a, b in zip(bounds[:-1], bounds[1:])]


def test_speech_shapes_labels_and_determinism():
    data = build_dataset(SPEECH, "frames", seed=0)
    assert len(data) == 512
    assert data.x.shape == (512, 32, 32) and data.x.dtype == torch.float32
    assert data.y.shape == (512, 32) and data.y.dtype == torch.int64
    assert torch.equal(data.y.unique(), torch.arange(16))  # every class occurs, none outside
    assert data.spec == DataSpec(kind="frames", seq_len=32, features=32, num_classes=16)
    again = build_dataset(SPEECH, "frames", seed=0)
    assert torch.equal(data.x, again.x) and torch.equal(data.y, again.y)
    other = build_dataset(SPEECH, "frames", seed=1)
    assert not torch.equal(data.x, other.x) and not torch.equal(data.y, other.y)
    x, y = stream(data, 4, 1, 2, seed=0).batch_at(3)
    assert x.shape == (4, 32, 32) and y.shape == (4, 32)


def test_speech_segments_have_the_configured_lengths():
    cfg = dataclasses.replace(SPEECH, min_segment=3, max_segment=5, samples=64)
    data = build_dataset(cfg, "frames", seed=0)
    lengths = []
    for labels in data.y:
        # Interior runs: the first and last segment are cut by the utterance's ends. A run can
        # hold two segments when the chain repeats a class, so only the lower bound is exact.
        lengths += [b - a for a, b, _ in runs(labels)[1:-1]]
    assert min(lengths) == 3
    assert sum(3 <= n <= 5 for n in lengths) > 0.7 * len(lengths)


def test_segment_of_frame():
    lengths = torch.tensor([[2, 3, 4], [4, 2, 2]])
    offset = torch.tensor([0, 3])
    # Utterance 0 starts on a boundary; utterance 1 starts on the last frame of its first segment.
    expected = torch.tensor([[0, 0, 1, 1, 1, 2], [0, 1, 1, 2, 2, 3]])
    assert torch.equal(speech.segment_of_frame(lengths, offset, 6), expected)


def nearest_mean_accuracy(train_x, train_y, test_x, test_y, classes):
    means = torch.stack([train_x[train_y == c].mean(0) for c in range(classes)])
    return (torch.cdist(test_x, means).argmin(1) == test_y).double().mean().item()


def test_speech_is_learnable_and_needs_context():
    data = build_dataset(SPEECH, "frames", seed=0)
    half = len(data) // 2
    fit_x, fit_y = data.x[:half].reshape(-1, 32), data.y[:half].flatten()
    test_x, test_y = data.x[half:].reshape(-1, 32), data.y[half:].flatten()
    # One frame at a time, with the class means of the other half: far above chance (1/16) ...
    frame = nearest_mean_accuracy(fit_x, fit_y, test_x, test_y, 16)
    assert 0.4 < frame < 0.85, frame
    # ... and far better still with the mean of the frames of each frame's segment: the
    # information is there, but spread over time, so a model must use context to get it.
    # (Each frame is replaced by the mean of its run of equal labels.)
    averaged = torch.cat([x[a:b].mean(0).expand(b - a, -1)
                          for x, y in zip(data.x[half:], data.y[half:]) for a, b, _ in runs(y)])
    segment = nearest_mean_accuracy(fit_x, fit_y, averaged, test_y, 16)
    print(f"nearest class mean: {frame:.3f} of single frames, {segment:.3f} with segment means")
    assert segment > frame + 0.2 and segment > 0.9, (frame, segment)


def test_speech_phoneme_order_is_not_uniform():
    data = build_dataset(dataclasses.replace(SPEECH, samples=1024), "frames", seed=0)
    counts = torch.zeros(16, 16, dtype=torch.float64)
    for y in data.y:
        classes = [c for _, _, c in runs(y)]
        for prev, nxt in zip(classes[:-1], classes[1:]):
            counts[prev, nxt] += 1
    p = counts / counts.sum()
    conditional = p / p.sum(1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * conditional.clamp_min(1e-12).log()).sum().item()  # H(next | previous), nats
    assert entropy < 0.6 * math.log(16)


# --------------------------------------------------------------------------- digits
def test_digits():
    data = build_dataset(DigitsData(), "image", seed=0)
    assert len(data) == 1797
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == torch.float32
    assert data.y.dtype == torch.int64 and torch.equal(data.y.unique(), torch.arange(10))
    assert abs(data.x.mean().item()) < 1e-4 and abs(data.x.std().item() - 1) < 1e-3
    assert data.spec == DataSpec(kind="image", channels=1, image_size=8, num_classes=10)


# --------------------------------------------------------------------------- chars
def test_chars_default_corpus():
    data = build_dataset(CharsData(seq_len=64), "tokens", seed=0)
    assert len(data) > 1000
    assert data.spec.vocab_size == len(data.vocab) > 30
    assert list(data.vocab) == sorted(set(data.vocab))
    assert data.x.shape == data.y.shape == (len(data), 64)
    assert torch.equal(data.x[:, 1:], data.y[:, :-1])
    assert 0 <= data.x.min() and data.x.max() < data.spec.vocab_size


def test_chars_from_a_file(tmp_path):
    text = "the quick brown fox jumps over the lazy dog\n" * 5  # 220 characters
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    data = build_dataset(CharsData(paths=(str(path),), seq_len=9, batch_size=2), "tokens", 0)
    assert len(data) == len(text) // 10
    assert data.vocab == "".join(sorted(set(text)))
    # Window i is text[10i : 10i+10]: x its first 9 characters, y its last 9.
    decode = lambda ids: "".join(data.vocab[i] for i in ids.tolist())
    assert decode(data.x[3]) == text[30:39] and decode(data.y[3]) == text[31:40]


def test_chars_replaces_invalid_utf8(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"abc\xffdef" * 10)
    data = build_dataset(CharsData(paths=(str(path),), seq_len=4, batch_size=1), "tokens", 0)
    assert "\ufffd" in data.vocab


def test_chars_missing_file(tmp_path):
    missing = str(tmp_path / "nope.txt")
    cfg = CharsData(paths=(missing,))
    message = one_line_error(lambda: build_dataset(cfg, "tokens", 0))
    assert "data.paths" in message and missing in message


def test_chars_corpus_too_small_for_seq_len(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("abc", encoding="utf-8")
    cfg = CharsData(paths=(str(path),), seq_len=64, batch_size=1)
    assert "data.seq_len" in one_line_error(lambda: build_dataset(cfg, "tokens", 0))


# --------------------------------------------------------------------------- errors
def test_too_few_samples_for_one_batch():
    cfg = SyntheticData(samples=8, batch_size=16, image_size=4)
    assert "data.batch_size" in one_line_error(lambda: build_dataset(cfg, "image", 0))
    speech_cfg = dataclasses.replace(SPEECH, samples=3)
    assert "data.samples" in one_line_error(lambda: build_dataset(speech_cfg, "frames", 0))
