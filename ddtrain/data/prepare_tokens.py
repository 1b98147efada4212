"""Turn local text files into the token files ``TokenWindows`` reads: train.bin, val.bin, meta.json.

    python -m ddtrain.data.prepare_tokens IN.txt [IN2.txt ...] --out DIR [--level bytes|chars]
                                          [--val-fraction 0.1]

No tokenizer and no download: ``bytes`` makes each byte a token (vocabulary 256, any file works),
``chars`` makes each distinct character a token (UTF-8 text only; the vocabulary is the sorted set
of characters, as data=chars builds it). The ids are written as raw little-endian uint16, or uint32
when the vocabulary outgrows uint16, the format nanoGPT's prepare scripts write.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from ddtrain.data.chars import encode as encode_text
from ddtrain.data.tokens import DTYPES

LEVELS = ("bytes", "chars")


def dtype_for(vocab_size: int) -> str:
    """The narrowest dtype TokenWindows reads that holds ids 0 .. vocab_size-1."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def encode_bytes(blobs: list[bytes]) -> np.ndarray:
    """The bytes of every blob, in order, as ids in [0, 256)."""
    return np.frombuffer(b"".join(blobs), dtype=np.uint8)


def encode_chars(texts: list[str]) -> tuple[np.ndarray, str]:
    """(ids, chars): ids index ``chars``, the sorted set of characters of all the texts."""
    ids, chars = encode_text("".join(texts))
    return ids.numpy(), chars


def check_val_fraction(val_fraction: float) -> None:
    # A negated range test, so that NaN (which fails every comparison) is refused too.
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction={val_fraction} must be in [0, 1); 0 writes no val.bin")


def split(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): val is the last ``val_fraction`` of ids, rounded to whole tokens.

    The tail rather than a random sample: held-out text must be text the model never saw any
    window of, and a contiguous tail shares at most one window boundary with the training part.
    """
    check_val_fraction(val_fraction)
    n_val = round(len(ids) * val_fraction)
    if val_fraction > 0 and not 0 < n_val < len(ids):
        raise ValueError(
            f"--val-fraction={val_fraction} of {len(ids)} tokens leaves {n_val} for val.bin and "
            f"{len(ids) - n_val} for train.bin; give more text or --val-fraction 0"
        )
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


def read_inputs(paths: list[str], level: str) -> tuple[np.ndarray, int, str]:
    """(ids, vocab_size, chars) of the files concatenated in order; chars is "" for bytes."""
    for path in paths:
        if not os.path.exists(path):
            raise ValueError(f"{path}: no such file; give existing text files")
        if not os.path.isfile(path):
            raise ValueError(f"{path} is not a regular file; give text files")
    blobs = []
    for path in paths:
        with open(path, "rb") as f:
            blobs.append(f.read())
    if not any(blobs):
        raise ValueError(f"the input files hold no text ({', '.join(paths)}); give non-empty files")
    if level == "bytes":
        return encode_bytes(blobs), 256, ""
    texts = []
    for path, blob in zip(paths, blobs):
        try:
            texts.append(blob.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{path} is not UTF-8 text (byte {exc.start} is {blob[exc.start]:#04x}); "
                "use --level bytes for it"
            ) from None
    ids, chars = encode_chars(texts)
    return ids, len(chars), chars


def _write_ids(path: str, ids: np.ndarray, dtype: str) -> None:
    # Through a temporary name: an interrupted run must not leave a short file under the real name.
    tmp = f"{path}.tmp"
    ids.astype(DTYPES[dtype]).tofile(tmp)
    os.replace(tmp, path)


def write(out: str, train: np.ndarray, val: np.ndarray, meta: dict) -> list[str]:
    """Write train.bin, val.bin (when val holds tokens) and meta.json into ``out``; their paths."""
    out = os.path.abspath(out)  # the printed override must work from any directory Hydra runs in
    os.makedirs(out, exist_ok=True)
    written = [os.path.join(out, "train.bin")]
    _write_ids(written[0], train, meta["dtype"])
    val_path = os.path.join(out, "val.bin")
    if len(val):
        _write_ids(val_path, val, meta["dtype"])
        written.append(val_path)
    elif os.path.exists(val_path):
        # meta.json describes every .bin here: an old val.bin of another vocabulary must not stay.
        os.remove(val_path)
    meta_path = os.path.join(out, "meta.json")
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
        f.write("\n")
    written.append(meta_path)
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ddtrain.data.prepare_tokens",
        description="Write train.bin, val.bin and meta.json for data=tokens from local text files.",
    )
    parser.add_argument("inputs", nargs="+", metavar="IN", help="text files, concatenated in this order")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the .bin files and meta.json")
    parser.add_argument("--level", choices=LEVELS, default="bytes",
                        help="bytes: one token per byte (vocab 256); chars: one per distinct character")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="the last fraction of the tokens, held out in val.bin; 0: no val.bin")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        # The fraction first: a typo in it must not cost reading a large corpus.
        check_val_fraction(args.val_fraction)
        ids, vocab_size, chars = read_inputs(args.inputs, args.level)
        train, val = split(ids, args.val_fraction)
    except ValueError as exc:
        print(f"prepare_tokens: error: {exc}", file=sys.stderr)
        return 2
    dtype = dtype_for(vocab_size)
    meta = {"vocab_size": vocab_size, "dtype": dtype, "level": args.level}
    if args.level == "chars":
        meta["chars"] = chars
    meta.update(sources=[os.path.abspath(p) for p in args.inputs],
                train_tokens=len(train), val_tokens=len(val))
    written = write(args.out, train, val, meta)
    print(f"{len(ids)} tokens ({len(train)} train, {len(val)} val), "
          f"vocab {vocab_size} ({args.level}), {dtype}")
    print("wrote " + " ".join(written))
    val_override = f" data.val_path={written[1]}" if len(val) else ""
    print(f"train with: ddtrain model=gpt data=tokens data.path={written[0]}{val_override} "
          f"data.dtype={dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
