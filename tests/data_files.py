"""Small real data files for tests, made on the spot: token files written by prepare_tokens from
text, and image folders of PNG and JPEG files drawn with PIL (one colour pattern per class)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TEXT = ("the quick brown fox jumps over the lazy dog; " * 80
        + "pack my box with five dozen liquor jugs. " * 80)
CLASSES = ("circle", "square", "stripes")


def token_dir(root: Path) -> Path:
    """``root`` holding train.bin, val.bin and meta.json of TEXT at byte level."""
    from ddtrain.data.prepare_tokens import main

    source = root / "corpus.txt"
    root.mkdir(parents=True, exist_ok=True)
    source.write_text(TEXT, encoding="utf-8")
    assert main([str(source), "--out", str(root), "--level", "bytes", "--val-fraction", "0.1"]) == 0
    return root


def _draw(kind: str, size: int, rng: np.random.Generator):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(image)
    lo, hi = int(rng.integers(2, size // 4)), int(rng.integers(3 * size // 4, size - 2))
    colour = tuple(int(v) for v in rng.integers(150, 256, 3))
    if kind == "circle":
        draw.ellipse((lo, lo, hi, hi), fill=colour)
    elif kind == "square":
        draw.rectangle((lo, lo, hi, hi), fill=colour)
    else:
        for x in range(0, size, 4):
            draw.line((x, 0, x, size), fill=colour, width=2)
    return image


def image_folder(root: Path, per_class: int = 6, size: int = 32, seed: int = 0) -> Path:
    """ROOT/<class>/<i>.png|jpg: real encoded files, so reading them costs a real decode."""
    rng = np.random.default_rng(seed)
    for kind in CLASSES:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = "png" if i % 2 else "jpg"
            _draw(kind, size, rng).save(folder / f"{i:04d}.{suffix}")
    return root


def corrupt(path: Path) -> Path:
    """A file with an image's name and no image inside."""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return path
