"""Generated speech-like utterances: per-frame phoneme labels that take context to read.

An utterance is a run of "phoneme" segments of random length (``data.min_segment`` to
``data.max_segment`` frames) whose classes follow a random sparse Markov chain, a stand-in for
phonotactics (after a given phoneme only a few are likely). Each class has a fixed spectral
template, a smooth random curve over ``data.features`` channels like the envelope of a
filterbank frame. A frame is its segment's template blended with its neighbours' at segment
boundaries (coarticulation), plus Gaussian noise of std ``data.noise``; its label is its
segment's class.

At the default noise (2.0) one frame alone is ambiguous and the segment around it is not: the
nearest class mean labels 65-70% of single frames right, and about 96% when each frame is
replaced by the mean of its segment (16 classes, 32 features; tests/unit/test_data.py measures
both). So the loss keeps falling for models that use neighbouring frames (a conv front end) and
history (a recurrence). Like ``ddtrain.data.synthetic``, everything is drawn from one seeded
torch.Generator, templates and chain first, so those depend on the seed alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ddtrain.config import ConfigError, DataConfig, check_positive, check_positives
from ddtrain.data.memory import InMemory, at_least_one_batch
from ddtrain.data.spec import DataSpec
from ddtrain.data.synthetic import data_generator, markov_chain, markov_walk
from ddtrain.registry import DataEntry

# Weights of a frame's own template and of each neighbour's: a frame on a segment boundary is a
# quarter its neighbour's (coarticulation); inside a segment the blend changes nothing.
_BLEND = (0.25, 0.5, 0.25)
# Smoothing of the templates across channels, a spectral envelope's smoothness: neighbouring
# channels of one template are correlated, so classes differ in broad shape, not single channels.
_ENVELOPE = (1.0, 2.0, 3.0, 2.0, 1.0)


@dataclass(frozen=True)
class SpeechData(DataConfig):
    name: str = "speech"
    batch_size: int = 4
    samples: int = 4096  # utterances generated
    seq_len: int = 32  # frames per utterance
    features: int = 32  # spectral channels per frame
    num_classes: int = 16  # phoneme classes
    noise: float = 2.0  # std of the per-frame noise (the class templates have unit variance)
    min_segment: int = 2  # frames of the shortest phoneme segment
    max_segment: int = 8  # and of the longest


def validate(d: SpeechData) -> None:
    check_positives("data", d, "samples", "seq_len", "features", "min_segment")
    check_positive("data.noise", d.noise, zero_ok=True)
    if d.max_segment < d.min_segment:
        raise ConfigError(f"data.max_segment={d.max_segment} must be >= data.min_segment={d.min_segment}")
    if d.num_classes < 2:
        raise ConfigError(f"data.num_classes={d.num_classes} must be >= 2")


def templates(num_classes: int, features: int, g: torch.Generator) -> torch.Tensor:
    """One smooth spectral template per class: float32 [num_classes, features], unit variance overall."""
    kernel = torch.tensor(_ENVELOPE).view(1, 1, -1)
    raw = torch.randn(num_classes, 1, features + kernel.shape[-1] - 1, generator=g)
    smooth = F.conv1d(raw, kernel / kernel.sum()).squeeze(1)
    # One mean and std for all of them: classes may differ in overall level (one per row would
    # also break for a single feature).
    return (smooth - smooth.mean()) / smooth.std()


def segment_of_frame(lengths: torch.Tensor, offset: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Which segment each frame falls in: int64 [samples, seq_len].

    ``lengths`` [samples, K] are segment lengths in frames; an utterance starts ``offset``
    [samples] frames into its first segment, so utterances do not all begin on a boundary.
    """
    ends = lengths.cumsum(dim=1)  # one past the last position of each segment
    positions = torch.arange(seq_len) + offset.unsqueeze(1)
    return torch.searchsorted(ends, positions, right=True)


def frames(cfg: SpeechData, seed: int) -> tuple[torch.Tensor, torch.Tensor, DataSpec]:
    """``cfg.samples`` utterances: x float32 [samples, seq_len, features], y int64 [samples, seq_len]."""
    g = data_generator(seed)
    # Templates and chain first, so they depend only on the seed and the shapes.
    table = templates(cfg.num_classes, cfg.features, g)
    successors, cdf = markov_chain(cfg.num_classes, g)
    # Enough segments to cover seq_len frames after any offset into the first (every segment
    # after it has at least min_segment frames).
    count = math.ceil(cfg.seq_len / cfg.min_segment) + 1
    lengths = torch.randint(cfg.min_segment, cfg.max_segment + 1, (cfg.samples, count), generator=g)
    offset = (torch.rand(cfg.samples, generator=g) * lengths[:, 0]).long()
    classes = markov_walk(successors, cdf, count - 1, cfg.samples, g)  # [samples, count]
    y = classes.gather(1, segment_of_frame(lengths, offset, cfg.seq_len))
    # The blend over time: each frame with the frames before and after it (edges repeated).
    padded = torch.cat([y[:, :1], y, y[:, -1:]], dim=1)
    before, own, after = _BLEND
    clean = before * table[padded[:, :-2]] + own * table[padded[:, 1:-1]] + after * table[padded[:, 2:]]
    x = clean + cfg.noise * torch.randn(clean.shape, generator=g)
    spec = DataSpec(kind="frames", seq_len=cfg.seq_len, features=cfg.features, num_classes=cfg.num_classes)
    return x, y, spec


def build(cfg: SpeechData, kind: str, seed: int, split: str) -> InMemory | None:
    if split != "train":
        return None
    data = InMemory(*frames(cfg, seed))
    return at_least_one_batch(data, "speech", cfg.batch_size, " or raise data.samples")


ENTRY = DataEntry(name="speech", schema=SpeechData, kinds=("frames",), build=build, validate=validate)
