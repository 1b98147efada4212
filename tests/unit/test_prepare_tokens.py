"""prepare_tokens' pure steps (encode, split, checks) and its main() in-process, read back by TokenWindows."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ddtrain.data.prepare_tokens import dtype_for, encode_bytes, encode_chars, main, read_inputs, split
from ddtrain.data.tokens import TokenWindows
from tests.assertions import one_line_error


def test_bytes_are_their_own_ids():
    assert encode_bytes([b"a", "é".encode(), b"\x00\xff"]).tolist() == [97, 0xC3, 0xA9, 0, 255]


def test_chars_index_the_sorted_set_of_characters_across_texts():
    ids, chars = encode_chars(["bca", "aé"])
    assert chars == "abcé"
    assert "".join(chars[i] for i in ids.tolist()) == "bcaaé"


@pytest.mark.parametrize("vocab, dtype", [(256, "uint16"), (65536, "uint16"), (65537, "uint32")])
def test_dtype_for(vocab, dtype):
    assert dtype_for(vocab) == dtype


def test_split_holds_out_the_tail():
    train, val = split(np.arange(100), 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))
    train, val = split(np.arange(100), 0.0)
    assert len(train) == 100 and len(val) == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, math.nan])
def test_split_refuses_a_fraction_outside_0_1(fraction):
    message = one_line_error(lambda: split(np.arange(100), fraction))
    assert f"--val-fraction={fraction} must be in [0, 1)" in message


@pytest.mark.parametrize("n, fraction", [(4, 0.1), (1, 0.6)])
def test_split_refuses_an_empty_part(n, fraction):
    message = one_line_error(lambda: split(np.arange(n), fraction))
    assert "give more text or --val-fraction 0" in message


def test_read_inputs_refuses_missing_directory_and_empty(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("abc")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    missing = str(tmp_path / "nope.txt")
    assert f"{missing}: no such file" in one_line_error(lambda: read_inputs([str(good), missing], "bytes"))
    assert "is not a regular file" in one_line_error(lambda: read_inputs([str(tmp_path)], "bytes"))
    assert "hold no text" in one_line_error(lambda: read_inputs([str(empty)], "chars"))


def test_chars_refuses_non_utf8_and_bytes_takes_it(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    message = one_line_error(lambda: read_inputs([str(path)], "chars"))
    assert f"{path} is not UTF-8 text" in message and "byte 3 is 0xe9" in message
    assert "--level bytes" in message
    ids, vocab, chars = read_inputs([str(path)], "bytes")
    assert ids.tolist() == [99, 97, 102, 0xE9] and vocab == 256 and chars == ""


def test_main_writes_files_that_token_windows_reads(tmp_path, capsys):
    text = "hello wörld\n" * 50
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    argv = [str(tmp_path / "a.txt"), "--out", str(out), "--level", "chars", "--val-fraction", "0.2"]
    assert main(argv) == 0
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert meta["chars"] == "".join(sorted(set(text))) and meta["vocab_size"] == len(meta["chars"])
    assert (meta["dtype"], meta["level"]) == ("uint16", "chars")
    assert (meta["train_tokens"], meta["val_tokens"]) == (480, 120)
    train = TokenWindows(out / "train.bin", seq_len=11)
    assert train.spec.vocab_size == meta["vocab_size"]  # from meta.json
    assert "".join(meta["chars"][i] for i in train[0][0].tolist()) == text[:11]
    val = np.fromfile(out / "val.bin", dtype="<u2")
    assert "".join(meta["chars"][i] for i in val) == text[480:]
    printed = capsys.readouterr().out
    override = f"data=tokens data.path={out / 'train.bin'} data.val_path={out / 'val.bin'} data.dtype=uint16"
    assert override in printed


def test_no_val_fraction_leaves_no_val_bin(tmp_path, capsys):
    (tmp_path / "a.txt").write_bytes(b"\x00\x01binary is fine at byte level" * 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "val.bin").write_bytes(b"stale")
    assert main([str(tmp_path / "a.txt"), "--out", str(out), "--val-fraction", "0"]) == 0
    assert not (out / "val.bin").exists()
    assert json.loads((out / "meta.json").read_text())["val_tokens"] == 0
    assert "data.val_path" not in capsys.readouterr().out
    assert np.fromfile(out / "train.bin", dtype="<u2")[:2].tolist() == [0, 1]


def test_main_bad_input_is_one_line_and_2(tmp_path, capsys):
    assert main([str(tmp_path / "nope.txt"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err
    assert not (tmp_path / "out").exists()
