"""Generated data sets that need no files and still have something to learn.

Pure noise would make every loss curve flat, so a throughput run could not tell a broken model
or reducer from a working one. Each set here is drawn from a fixed random "teacher" instead:
images come from a low-dimensional latent and are labelled by a random linear map of it (a
linear model of the pixels can reach nearly 100% accuracy), and token sequences follow a random
Markov chain in which each symbol has only a few likely successors.
Everything is drawn from one seeded torch.Generator, so the same seed gives the same data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddtrain.config import ConfigError, DataConfig, check_positives
from ddtrain.data.memory import InMemory, at_least_one_batch
from ddtrain.data.spec import DataSpec
from ddtrain.registry import DataEntry

# Mixed into the seed because torch.manual_seed(seed), which model initialisation uses, starts
# the very same stream as Generator().manual_seed(seed): unmixed, the teacher would be an exact
# copy of some layer's initial weights.
_SEED_SALT = 0x5D47A

# Images vary along far fewer directions than they have pixels, and so do these: each is drawn
# from a latent of this many dimensions. With every pixel independent (a teacher reading all 3072
# of a 32x32x3 image) a first layer must fit 3072 x classes weights from about as many samples as
# a default run sees (100 steps x 32), which leaves its loss where it started.
_LATENT = 16
_NOISE_SHARE = 0.1  # of each pixel's variance: noise independent of the latent

# Successors each token may have in the Markov chain: few enough that next-token prediction has
# clear signal (at most log2(4) = 2 bits of entropy against log2(vocab_size) for uniform), and
# enough that the walk does not settle into a short, quickly memorised loop.
_SUCCESSORS = 4


@dataclass(frozen=True)
class SyntheticData(DataConfig):
    name: str = "synthetic"
    samples: int = 4096  # size of the generated set
    image_size: int = 32  # images
    channels: int = 3  # images
    num_classes: int = 10  # images
    seq_len: int = 64  # tokens: context length
    vocab_size: int = 64  # tokens


def validate(d: SyntheticData) -> None:
    check_positives("data", d, "samples", "image_size", "channels", "seq_len")
    if d.num_classes < 2:
        raise ConfigError(f"data.num_classes={d.num_classes} must be >= 2")
    if d.vocab_size < 2:
        raise ConfigError(f"data.vocab_size={d.vocab_size} must be >= 2")


def data_generator(seed: int) -> torch.Generator:
    """The generator every generated data set draws from: ``seed``, salted."""
    return torch.Generator().manual_seed(seed + _SEED_SALT)


def images(cfg: SyntheticData, seed: int) -> tuple[torch.Tensor, torch.Tensor, DataSpec]:
    """``cfg.samples`` images [C, H, W] with unit-variance pixels, drawn from a ``_LATENT``-dim
    Gaussian latent z through a random linear "decoder" plus pixel noise, and labelled by the
    argmax of a random linear teacher on z (recoverable from the image by a linear map)."""
    g = data_generator(seed)
    features = cfg.channels * cfg.image_size * cfg.image_size
    # Decoder and teacher first, so they depend only on the seed and the shapes, never on the
    # sample count. Unit-norm columns: every pixel has unit variance, and every class logit the
    # same variance, so the classes come out roughly balanced.
    decoder = torch.randn(_LATENT, features, generator=g)
    decoder /= decoder.norm(dim=0, keepdim=True)
    teacher = torch.randn(_LATENT, cfg.num_classes, generator=g)
    teacher /= teacher.norm(dim=0, keepdim=True)
    # One row of draws per sample (latent, then pixel noise): sample i is the same for any count.
    draws = torch.randn(cfg.samples, _LATENT + features, generator=g)
    z, noise = draws[:, :_LATENT], draws[:, _LATENT:]
    x = (1 - _NOISE_SHARE) ** 0.5 * (z @ decoder) + _NOISE_SHARE**0.5 * noise
    y = (z @ teacher).argmax(dim=1)
    spec = DataSpec(
        kind="image",
        channels=cfg.channels,
        image_size=cfg.image_size,
        num_classes=cfg.num_classes,
    )
    return x.reshape(cfg.samples, cfg.channels, cfg.image_size, cfg.image_size), y, spec


def markov_chain(vocab_size: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random sparse chain: (successors int64 [V, k], cumulative probabilities float64 [V, k]).

    Kept as k successors per symbol rather than a dense [V, V] matrix so that a GPT-sized
    vocabulary (50k symbols) costs megabytes, not the ten gigabytes of a dense float32 matrix.
    """
    k = min(_SUCCESSORS, vocab_size)
    # The first successor follows one random cycle through all symbols, so every symbol can reach
    # every other (with successors drawn only at random, about e^-k of the symbols would have no
    # predecessor and never appear after the first position). The rest are drawn with
    # replacement: a repeated successor only merges two weights into one.
    cycle = torch.randperm(vocab_size, generator=g)
    next_in_cycle = torch.empty_like(cycle)
    next_in_cycle[cycle] = cycle.roll(-1)
    others = torch.randint(vocab_size, (vocab_size, k - 1), generator=g)
    successors = torch.cat([next_in_cycle.unsqueeze(1), others], dim=1)
    # Unequal weights, floored so that no allowed successor is vanishingly rare.
    weights = torch.rand(vocab_size, k, generator=g, dtype=torch.float64) + 0.1
    cdf = weights.cumsum(dim=1)
    # Dividing by the row total makes each row end at exactly 1.0, so a uniform draw in [0, 1)
    # can never land past the last successor.
    return successors, cdf / cdf[:, -1:]


def markov_walk(successors: torch.Tensor, cdf: torch.Tensor, steps: int, count: int,
                g: torch.Generator) -> torch.Tensor:
    """``count`` walks of ``steps`` transitions on a chain from ``markov_chain``: int64 [count, steps+1]."""
    k = successors.shape[1]
    uniform = torch.rand(steps, count, 1, generator=g, dtype=torch.float64)
    first = torch.randint(successors.shape[0], (count,), generator=g)
    # The walk itself runs in numpy on views of the torch draws (so the torch seed still decides
    # everything): it is `steps` tiny steps, and torch wakes its intra-op threads for each one,
    # which costs far more than the step itself.
    cdf_np, successors_np, uniform_np = cdf.numpy(), successors.flatten().numpy(), uniform.numpy()
    seq = np.empty((count, steps + 1), dtype=np.int64)
    seq[:, 0] = first.numpy()
    # One vectorised step per position over all walks, by inverse-CDF sampling: the successor
    # taken is the first whose cumulative probability exceeds u, i.e. the number of successors
    # whose cumulative probability does not.
    for t in range(steps):
        prev = seq[:, t]
        choice = (cdf_np[prev] <= uniform_np[t]).sum(axis=1)
        seq[:, t + 1] = successors_np[prev * k + choice]
    return torch.from_numpy(seq)


def tokens(cfg: SyntheticData, seed: int) -> tuple[torch.Tensor, torch.Tensor, DataSpec]:
    """``cfg.samples`` sequences of a random Markov chain; x = seq[:-1], y = seq[1:] (int64)."""
    g = data_generator(seed)
    successors, cdf = markov_chain(cfg.vocab_size, g)
    seq = markov_walk(successors, cdf, cfg.seq_len, cfg.samples, g)
    spec = DataSpec(kind="tokens", seq_len=cfg.seq_len, vocab_size=cfg.vocab_size)
    return seq[:, :-1], seq[:, 1:], spec


def build(cfg: SyntheticData, kind: str, seed: int, split: str) -> InMemory | None:
    if split != "train":
        return None
    data = InMemory(*(images if kind == "image" else tokens)(cfg, seed))
    return at_least_one_batch(data, "synthetic", cfg.batch_size, " or raise data.samples")


ENTRY = DataEntry(name="synthetic", schema=SyntheticData, kinds=("image", "tokens"), build=build,
                  validate=validate)
