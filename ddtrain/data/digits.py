"""scikit-learn's bundled handwritten digits: a real image set that needs no download.

1797 grayscale 8x8 images of the digits 0-9 (the UCI optical-recognition test set). It ships
inside the scikit-learn wheel, so runs on air-gapped clusters still train on real data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ddtrain.config import DataConfig
from ddtrain.data.memory import InMemory, at_least_one_batch
from ddtrain.data.spec import DataSpec
from ddtrain.registry import DataEntry


@dataclass(frozen=True)
class DigitsData(DataConfig):
    name: str = "digits"


def images() -> tuple[torch.Tensor, torch.Tensor, DataSpec]:
    """x float32 [1797, 1, 8, 8], standardised over the whole set; y int64 in [0, 10)."""
    # Imported here so that runs on other data sets never pay for (or need) scikit-learn.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixels are counts 0..16 of set bits in 4x4 blocks of the 32x32 scan; /16 maps them to [0, 1].
    x = torch.as_tensor(bunch.data, dtype=torch.float64).reshape(-1, 1, 8, 8) / 16.0
    # One mean and std for the whole set (not per pixel): the border pixels are almost always 0,
    # and per-pixel scaling would blow their rare non-zero values up into outliers.
    x = ((x - x.mean()) / x.std()).to(torch.float32)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    spec = DataSpec(kind="image", channels=1, image_size=8, num_classes=10)
    return x, y, spec


def build(cfg: DigitsData, kind: str, seed: int, split: str) -> InMemory | None:
    if split != "train":
        return None
    return at_least_one_batch(InMemory(*images()), "digits", cfg.batch_size, "")


ENTRY = DataEntry(name="digits", schema=DigitsData, kinds=("image",), build=build)
