"""A character-level text corpus for token models, from local files or the docs inside CPython.

With no files given, the corpus is ``pydoc_data.topics``: about half a million characters of
English reference text that every CPython installation carries (it backs ``help('topic')``), so a
language model trains on real text without any download.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ddtrain.config import DataConfig, check_positive
from ddtrain.data.memory import InMemory, at_least_one_batch
from ddtrain.data.spec import DataSpec
from ddtrain.registry import DataEntry


@dataclass(frozen=True)
class CharsData(DataConfig):
    name: str = "chars"
    batch_size: int = 16
    seq_len: int = 128  # context length, in characters
    paths: tuple[str, ...] = ()  # text files; empty = the Python docs bundled with CPython


# How much of each file is read to tell text from binary: an executable's or an image's header is
# in its first bytes, and a few KB cost nothing to read per file.
_SNIFF_BYTES = 8192
# The share of undecodable bytes in that head above which a file is not taken as UTF-8 text.
_MAX_UNDECODABLE = 0.25


def _bundled_docs() -> str:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip it from their system Python
        raise ValueError(
            "data=chars: this Python lacks pydoc_data (its bundled docs); give text files in data.paths"
        ) from None
    # Sorted keys: the corpus, and so every sample index, must not depend on dict order.
    return "".join(topics[key] for key in sorted(topics))


def _check_text_file(path: str) -> None:
    """Refuse a path that is missing, not a regular file, or evidently not UTF-8 text.

    Only the head is read, so checking a large corpus costs nothing. Text never holds a NUL byte
    (binaries and UTF-16 do, in their first bytes); a head of which more than a quarter fails to
    decode is in another encoding or no text at all, while a few stray bytes in real text only cost
    a character each when it is read.
    """
    full = os.path.expanduser(path)
    if not os.path.exists(full):
        raise ValueError(
            f"data.paths: no such file {path!r}; give existing text files or leave data.paths empty"
        )
    if not os.path.isfile(full):
        raise ValueError(
            f"data.paths: {path!r} is not a regular file; give text files or leave data.paths empty"
        )
    with open(full, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    # The cut at _SNIFF_BYTES may split one character: a single replacement, far below the bar.
    undecodable = head.decode("utf-8", errors="replace").count("\ufffd")
    if b"\0" in head or undecodable > _MAX_UNDECODABLE * len(head):
        raise ValueError(
            f"data.paths: {path!r} is not UTF-8 text; data.paths takes text files (for binary data "
            "use data=tokens, on files from python -m ddtrain.data.prepare_tokens --level bytes)"
        )


def read_corpus(paths: tuple[str, ...]) -> str:
    """The files' text, concatenated in the given order; the bundled docs if ``paths`` is empty."""
    if not paths:
        return _bundled_docs()
    # Check every file before reading any, so a typo in the last path fails at once.
    for path in paths:
        _check_text_file(path)
    texts = []
    for path in paths:
        # errors="replace": one stray byte in a large scraped file should cost one character
        # (it becomes U+FFFD), not the run.
        with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    return "".join(texts)


def encode(text: str) -> tuple[torch.Tensor, str]:
    """(ids int64 [len(text)], vocab): vocab is the sorted set of characters, ids index into it."""
    # Through numpy's unique over code points rather than a Python dict lookup per character:
    # the same sorted order as sorted(set(text)), but fast on corpora of many megabytes.
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    points, ids = np.unique(codes, return_inverse=True)
    vocab = "".join(map(chr, points.tolist()))
    return torch.from_numpy(ids.astype(np.int64).reshape(-1)), vocab


def windows(cfg: CharsData) -> tuple[torch.Tensor, torch.Tensor, DataSpec, str]:
    """Non-overlapping windows of seq_len+1 characters: x = window[:-1], y = window[1:]; and vocab."""
    text = read_corpus(cfg.paths)
    width = cfg.seq_len + 1
    if len(text) < width:
        source = "data.paths" if cfg.paths else "the bundled docs"
        raise ValueError(
            f"data=chars: {source} hold {len(text)} characters, fewer than one sample of "
            f"data.seq_len+1={width}; lower data.seq_len or give more text in data.paths"
        )
    ids, vocab = encode(text)
    count = len(ids) // width
    # The tail shorter than one window is dropped: a padded sample would teach a fake symbol.
    seq = ids[: count * width].reshape(count, width)
    spec = DataSpec(kind="tokens", seq_len=cfg.seq_len, vocab_size=len(vocab))
    return seq[:, :-1], seq[:, 1:], spec, vocab


def build(cfg: CharsData, kind: str, seed: int, split: str) -> InMemory | None:
    if split != "train":
        return None
    return at_least_one_batch(InMemory(*windows(cfg)), "chars", cfg.batch_size,
                              ", lower data.seq_len or give more text in data.paths")


ENTRY = DataEntry(name="chars", schema=CharsData, kinds=("tokens",), build=build,
                  validate=lambda d: check_positive("data.seq_len", d.seq_len))
