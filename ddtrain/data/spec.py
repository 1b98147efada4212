"""What a data set hands to a model builder: the shape of one sample and of its target."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataSpec:
    """``kind="image"``: x is float [C, H, W], y is an int64 class index in [0, num_classes).
    ``kind="tokens"``: x and y are int64 [seq_len] token ids in [0, vocab_size); y is x shifted by one.
    ``kind="frames"``: x is float [seq_len, features] (one spectral frame per step), y is int64
    [seq_len], each frame's class in [0, num_classes).
    ``kind="any"``: the user's own samples; ddtrain knows nothing of their shapes.
    """

    kind: str  # "image" | "tokens" | "frames" | "any"
    channels: int = 0
    image_size: int = 0
    num_classes: int = 0
    seq_len: int = 0
    vocab_size: int = 0
    features: int = 0
