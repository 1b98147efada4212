"""Token windows read straight from a flat binary file of token ids, for corpora too big for memory.

The file is the format nanoGPT's prepare scripts and ``python -m ddtrain.data.prepare_tokens``
write: raw little-endian uint16 or uint32 ids, no header. It is memory-mapped read-only, so a
sample costs one small page-cache read and a file of many gigabytes costs no host memory.

The map is opened lazily, on the first sample a process reads, and is left out of the pickled
state: a DataLoader worker (forked or spawned) opens its own map instead of sharing a handle.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ddtrain.config import ConfigError, DataConfig, check_choice, check_positive
from ddtrain.data.spec import DataSpec
from ddtrain.errors import BadSample
from ddtrain.registry import DataEntry

# Explicitly little-endian: the files are written on x86/ARM hosts and must read alike everywhere.
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
# Tokens scanned per step when the vocabulary size comes from the file itself: 64 Mi uint16 ids are
# 128 MiB, enough to run at memory bandwidth without holding a large file in memory at once.
_SCAN_CHUNK = 1 << 26


def _check_file(path: str, key: str) -> int:
    """The file's size in bytes, after checking that it is a non-empty regular file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ValueError(
            f"{key}={path} does not exist; give a .bin file of token ids "
            "(python -m ddtrain.data.prepare_tokens writes one from text)"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{key}={path} is not a regular file; give a .bin file of token ids")
    if info.st_size == 0:
        raise ValueError(f"{key}={path} is empty; give a .bin file of token ids")
    return info.st_size


def _meta(path: str) -> dict:
    """meta.json next to the token file, or {} when there is none."""
    meta_path = os.path.join(os.path.dirname(path), "meta.json")
    if not os.path.isfile(meta_path):
        return {}
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{meta_path} cannot be read as JSON ({exc}); fix or delete it, or set data.vocab_size"
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} is not a JSON object; fix or delete it, or set data.vocab_size")
    meta["_path"] = meta_path
    return meta


def _meta_vocab(meta: dict) -> int:
    value = meta.get("vocab_size")
    # bool is an int in Python; "vocab_size": true is a broken file, not a vocabulary of one.
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(
            f"{meta['_path']}: vocab_size={value!r} is not a positive integer; fix it or set data.vocab_size"
        )
    return value


def _scan_vocab(tokens: np.ndarray) -> int:
    """The highest id + 1, read in chunks so the scan never holds the whole file."""
    top = 0
    for start in range(0, len(tokens), _SCAN_CHUNK):
        top = max(top, int(tokens[start : start + _SCAN_CHUNK].max()))
    return top + 1


class TokenWindows(Dataset):
    """Sample i is tokens[i*seq_len : i*seq_len + seq_len + 1]: x its first seq_len ids, y its last
    seq_len (x shifted by one), both int64 [seq_len].

    Consecutive windows share one token, so every token but the first is a target exactly once
    and the samples do not overlap as training examples. The tail too short for a window is
    dropped. ``vocab_size`` > 0 is used as given; 0 reads ``vocab_size`` from meta.json next to
    the file, or else scans the file for its highest id. Every sample is checked against it, since
    an id past the embedding table otherwise fails far from its cause (a CUDA device assert).
    ``key`` is the config key that named ``path``, for the error messages.
    """

    def __init__(self, path: str, seq_len: int, dtype: str = "uint16", vocab_size: int = 0,
                 key: str = "data.path"):
        if dtype not in DTYPES:
            raise ValueError(f"data.dtype={dtype!r} is not allowed; choose one of: {', '.join(DTYPES)}")
        if seq_len <= 0:
            raise ValueError(f"data.seq_len={seq_len} must be > 0")
        if vocab_size < 0:
            raise ValueError(
                f"data.vocab_size={vocab_size} must be >= 0 (0: read meta.json or scan {key})"
            )
        path = os.path.expanduser(str(path))
        size = _check_file(path, key)
        itemsize = DTYPES[dtype].itemsize
        if size % itemsize:
            raise ValueError(
                f"{key}={path}: {size} bytes is not a multiple of {itemsize} ({dtype}); "
                "is data.dtype right? uint16 | uint32"
            )
        self.path, self.dtype, self.seq_len, self.key = path, dtype, seq_len, key
        self.ntokens = size // itemsize
        if self.ntokens < seq_len + 1:
            raise ValueError(
                f"{key}={path} holds {self.ntokens} tokens, fewer than one sample of "
                f"data.seq_len+1={seq_len + 1}; lower data.seq_len or give a longer file"
            )
        meta = _meta(path)
        if "dtype" in meta and meta["dtype"] != dtype:
            raise ValueError(
                f"data.dtype={dtype} but {meta['_path']} says the ids are {meta['dtype']}; "
                f"set data.dtype={meta['dtype']}"
            )
        self._tokens: np.ndarray | None = None
        if vocab_size > 0:
            self.vocab_size, self._vocab_from = vocab_size, f"data.vocab_size={vocab_size}"
        elif "vocab_size" in meta:
            self.vocab_size = _meta_vocab(meta)
            self._vocab_from = f"{meta['_path']} (vocab_size={self.vocab_size})"
        else:
            self.vocab_size = _scan_vocab(self._open())
            self._vocab_from = f"its highest id ({self.vocab_size - 1})"
        self.spec = DataSpec(kind="tokens", seq_len=seq_len, vocab_size=self.vocab_size)

    def _open(self) -> np.ndarray:
        return np.memmap(self.path, dtype=DTYPES[self.dtype], mode="r", shape=(self.ntokens,))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tokens"] = None  # each process maps the file itself
        return state

    def __len__(self) -> int:
        return (self.ntokens - 1) // self.seq_len

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(f"sample {index} is out of range for {count} windows of {self.path}")
        if self._tokens is None:
            self._tokens = self._open()
        start = index * self.seq_len
        # astype copies out of the map: the tensor must not keep the file's pages alive or writable.
        window = torch.from_numpy(self._tokens[start : start + self.seq_len + 1].astype(np.int64))
        top = int(window.max())
        if top >= self.vocab_size:
            where = start + int(window.argmax())
            # Met mid-run, in whichever rank reads it: BadSample ends the job with this line, exit 2.
            raise BadSample(
                f"{self.key}={self.path}: token {where} has id {top}, outside the vocabulary of "
                f"{self.vocab_size} from {self._vocab_from}; set data.vocab_size to at least {top + 1} "
                "or check data.dtype"
            )
        return window[:-1], window[1:]


@dataclass(frozen=True)
class TokensData(DataConfig):
    name: str = "tokens"
    batch_size: int = 16
    path: str | None = None  # the training ids; required
    val_path: str | None = None  # the validation ids, read by trainer.eval_every passes
    dtype: str = "uint16"  # uint16 | uint32: as the file was written
    seq_len: int = 128  # context length, in tokens
    vocab_size: int = 0  # 0: meta.json beside the file, else the highest id + 1


def validate(d: TokensData) -> None:
    if not d.path:
        raise ConfigError("data=tokens needs data.path=FILE.bin (token ids; python -m "
                          "ddtrain.data.prepare_tokens IN.txt --out DIR writes DIR/train.bin)")
    check_choice("data.dtype", d.dtype, DTYPES)
    check_positive("data.seq_len", d.seq_len)
    check_positive("data.vocab_size", d.vocab_size, zero_ok=True)


def build(d: TokensData, kind: str, seed: int, split: str) -> TokenWindows | None:
    path, key = (d.path, "data.path") if split == "train" else (d.val_path, "data.val_path")
    if path is None:
        return None
    return TokenWindows(path, d.seq_len, d.dtype, d.vocab_size, key=key)


ENTRY = DataEntry(name="tokens", schema=TokensData, kinds=("tokens",), build=build, validate=validate,
                  has_val=lambda d: d.val_path is not None)
