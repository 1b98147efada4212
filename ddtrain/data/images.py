"""Images from a class-per-subfolder tree (root/cat/1.jpg, root/dog/2.png), as torchvision reads it.

Decoding and augmentation happen per sample, in DataLoader workers; the only randomness is torch's
global RNG, which the loader seeds per sample, so a sample's crop and flip depend on the seed and
the sample alone, not on which worker or rank decodes it. A file that cannot be decoded is
skipped (or stops the run, with ``on_bad="stop"``): one bad JPEG among a million should not end a
run of days, and a deterministic replacement keeps every rank's batches reproducible.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from ddtrain.config import ConfigError, DataConfig, check_choice, check_positive
from ddtrain.data.spec import DataSpec
from ddtrain.errors import BadSample
from ddtrain.registry import DataEntry

ON_BAD = ("skip", "stop")
# ImageNet's per-channel statistics: the normalisation every torchvision classification recipe uses.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_log = logging.getLogger("ddtrain")
_LAYOUT = "one subfolder of images per class (root/cat/1.jpg, root/dog/2.png)"


def _transforms(image_size: int, train: bool):
    """The standard ImageNet recipe: a random resized crop and flip for training; for evaluation,
    the shorter side resized to 256/224 of the crop, then the centre crop."""
    from torchvision.transforms import v2

    if train:
        geometry = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(round(image_size * 256 / 224), antialias=True), v2.CenterCrop(image_size)]
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)]
    return v2.Compose(geometry + to_float)


def _check_root(root: str, key: str) -> None:
    if not os.path.exists(root):
        raise ValueError(f"{key}={root} does not exist; give a folder with {_LAYOUT}")
    if not os.path.isdir(root):
        raise ValueError(f"{key}={root} is not a directory; give a folder with {_LAYOUT}")
    with os.scandir(root) as entries:
        if not any(entry.is_dir() for entry in entries):
            raise ValueError(f"{key}={root} has no class subfolders; give it {_LAYOUT}")


class ImageFolderSet(Dataset):
    """(x float [3, S, S] normalised, y int class index) per image file under ``root``.

    Classes are the subfolder names in sorted order, as torchvision numbers them. A class folder
    with no images keeps its index: a train and a val tree must number their classes alike even
    when one of them lacks a class. ``key`` is the config key that named ``root``, for messages.
    """

    def __init__(self, root: str, image_size: int, *, train: bool = True, on_bad: str = "skip",
                 key: str = "data.root"):
        if image_size <= 0:
            raise ValueError(f"data.image_size={image_size} must be > 0")
        if on_bad not in ON_BAD:
            raise ValueError(
                f"data.on_bad_image={on_bad!r} is not allowed; choose one of: {', '.join(ON_BAD)}"
            )
        root = os.path.expanduser(str(root))
        _check_root(root, key)
        try:
            # Imported here: torchvision takes seconds to import, and only image folders need it.
            from torchvision.datasets import ImageFolder
            from torchvision.datasets.folder import IMG_EXTENSIONS
        except ImportError:
            raise ValueError(
                f"{key}: reading an image folder needs torchvision, which is missing; pip install torchvision"
            ) from None
        folder = ImageFolder(root, allow_empty=True)
        if not folder.samples:
            raise ValueError(
                f"{key}={root} holds no image files in its class subfolders; "
                f"accepted extensions: {', '.join(IMG_EXTENSIONS)}"
            )
        self.root, self.key, self.on_bad = root, key, on_bad
        self.classes: list[str] = folder.classes
        self.samples: list[tuple[str, int]] = folder.samples  # (path, class index), sorted by path
        self._load = folder.loader  # opens the file and converts it to RGB
        self._transform = _transforms(image_size, train)
        self._warned: set[str] = set()
        self.spec = DataSpec(kind="image", channels=3, image_size=image_size, num_classes=len(self.classes))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        count = len(self.samples)
        if not -count <= index < count:
            raise IndexError(f"sample {index} is out of range for {count} images under {self.root}")
        index %= count
        # A bad file is replaced by the next good one, (i+1) % n, ...: the same on every run and rank.
        for step in range(count):
            path, target = self.samples[(index + step) % count]
            # PIL raises OSError for an unknown format or a truncated file (UnidentifiedImageError
            # is one), ValueError for some malformed headers.
            try:
                image = self._load(path)
            except (OSError, ValueError) as exc:
                self._bad(path, exc)
                continue
            # as_subclass: callers get a plain tensor, not torchvision's Image wrapper.
            return self._transform(image).as_subclass(torch.Tensor), target
        raise ValueError(f"{self.key}={self.root}: no image file under it can be decoded; check the files")

    def _bad(self, path: str, exc: Exception) -> None:
        if self.on_bad == "stop":
            raise BadSample(
                f"{path} cannot be decoded as an image ({type(exc).__name__}); remove it or set "
                "data.on_bad_image=skip to skip such files"
            ) from None
        if path not in self._warned:  # once per file and process: a bad file is met every epoch
            self._warned.add(path)
            _log.warning("skipping %s: it cannot be decoded as an image (%s)", path, exc)


@dataclass(frozen=True)
class ImagesData(DataConfig):
    name: str = "images"
    root: str | None = None  # ROOT/CLASS/*.jpg|png...; required
    val_root: str | None = None  # the same classes, read by trainer.eval_every passes
    image_size: int = 224  # side of the square crops the model sees
    on_bad_image: str = "skip"  # skip: warn, naming the file, and read the next one | stop


def validate(d: ImagesData) -> None:
    if not d.root:
        raise ConfigError(f"data=images needs data.root=DIR: a folder with {_LAYOUT}")
    check_positive("data.image_size", d.image_size)
    check_choice("data.on_bad_image", d.on_bad_image, ON_BAD)


def build(d: ImagesData, kind: str, seed: int, split: str) -> ImageFolderSet | None:
    root, key = (d.root, "data.root") if split == "train" else (d.val_root, "data.val_root")
    if root is None:
        return None
    return ImageFolderSet(root, d.image_size, train=split == "train", on_bad=d.on_bad_image, key=key)


ENTRY = DataEntry(name="images", schema=ImagesData, kinds=("image",), build=build, validate=validate,
                  has_val=lambda d: d.val_root is not None)
