"""TokenWindows: windows of a memory-mapped token file, its vocabulary size, and its one-line errors."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from ddtrain.data import tokens
from ddtrain.data.tokens import TokenWindows
from ddtrain.errors import BadSample
from tests.assertions import one_line_error


def write_ids(path, ids, dtype="<u2", meta=None):
    np.asarray(ids).astype(dtype).tofile(path)
    if meta is not None:
        (path.parent / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return path




def test_windows_are_shifted_by_one_and_share_their_boundary_token(tmp_path):
    path = write_ids(tmp_path / "train.bin", np.arange(105))
    data = TokenWindows(path, seq_len=10)
    assert len(data) == (105 - 1) // 10 == 10
    for i in (0, 3, len(data) - 1):
        x, y = data[i]
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (10,)
        assert x.tolist() == list(range(10 * i, 10 * i + 10))
        assert y.tolist() == list(range(10 * i + 1, 10 * i + 11))
    # The last window ends at token 100: the tail 101..104 is too short for another.
    assert data[-1][1][-1].item() == 100
    assert data.spec.kind == "tokens" and data.spec.seq_len == 10


def test_a_file_of_exactly_one_window(tmp_path):
    data = TokenWindows(write_ids(tmp_path / "t.bin", [5, 6, 7, 8]), seq_len=3)
    assert len(data) == 1
    assert data[0][0].tolist() == [5, 6, 7] and data[0][1].tolist() == [6, 7, 8]


def test_index_out_of_range(tmp_path):
    data = TokenWindows(write_ids(tmp_path / "t.bin", np.arange(21)), seq_len=4)
    assert len(data) == 5
    with pytest.raises(IndexError):
        data[5]
    with pytest.raises(IndexError):
        data[-6]


def test_uint32_ids_read_as_little_endian(tmp_path):
    ids = [70000, 1, 2**31 + 5, 3, 65536]
    data = TokenWindows(write_ids(tmp_path / "t.bin", ids, dtype="<u4"), seq_len=4, dtype="uint32")
    assert data[0][0].tolist() == ids[:4] and data[0][1].tolist() == ids[1:]
    assert data.spec.vocab_size == 2**31 + 6


def test_the_same_bytes_read_as_uint16_are_other_ids(tmp_path):
    path = write_ids(tmp_path / "t.bin", [70000, 1, 2, 3], dtype="<u4")
    data = TokenWindows(path, seq_len=4, dtype="uint16")
    # 70000 = 0x00011170: its low half first (little-endian), then its high half.
    assert data[0][0].tolist() == [0x1170, 1, 1, 0]


def test_explicit_vocab_size_wins_over_meta_json(tmp_path):
    path = write_ids(tmp_path / "t.bin", np.arange(20), meta={"vocab_size": 50})
    assert TokenWindows(path, seq_len=4, vocab_size=300).spec.vocab_size == 300


def test_meta_json_gives_the_vocab_size_without_a_scan(tmp_path, monkeypatch):
    path = write_ids(tmp_path / "t.bin", np.arange(20), meta={"vocab_size": 256, "dtype": "uint16"})
    monkeypatch.setattr(tokens, "_scan_vocab", lambda _: pytest.fail("scanned despite meta.json"))
    assert TokenWindows(path, seq_len=4).spec.vocab_size == 256


def test_without_meta_json_the_scan_finds_the_highest_id_in_any_chunk(tmp_path, monkeypatch):
    ids = np.zeros(1000, dtype=np.int64)
    ids[997] = 4321  # in the last of many chunks
    path = write_ids(tmp_path / "t.bin", ids)
    monkeypatch.setattr(tokens, "_SCAN_CHUNK", 64)
    assert TokenWindows(path, seq_len=8).spec.vocab_size == 4322


def test_meta_json_without_vocab_size_falls_back_to_the_scan(tmp_path):
    path = write_ids(tmp_path / "t.bin", [1, 9, 2, 3], meta={"level": "bytes"})
    assert TokenWindows(path, seq_len=3).spec.vocab_size == 10


def test_an_id_outside_an_explicit_vocab_is_refused_when_read(tmp_path):
    path = write_ids(tmp_path / "t.bin", [1, 2, 3, 4, 5, 99, 7, 8, 9])
    data = TokenWindows(path, seq_len=4, vocab_size=50)
    assert data[0][0].tolist() == [1, 2, 3, 4]  # window 0 (tokens 0..4) holds no bad id
    message = one_line_error(lambda: data[1], BadSample)  # mid-run bad input: exit 2 on every rank
    assert f"data.path={path}" in message and "token 5 has id 99" in message
    assert "data.vocab_size=50" in message and "set data.vocab_size to at least 100" in message


def test_an_id_outside_meta_json_vocab_names_meta_json(tmp_path):
    path = write_ids(tmp_path / "t.bin", [1, 2, 300, 4], meta={"vocab_size": 256})
    message = one_line_error(lambda: TokenWindows(path, seq_len=3)[0])
    assert "meta.json" in message and "at least 301" in message


def test_pickling_leaves_the_map_behind_and_the_copy_opens_its_own(tmp_path):
    data = TokenWindows(write_ids(tmp_path / "t.bin", np.arange(41)), seq_len=8)
    assert data._tokens is None  # nothing is mapped until a sample is read
    data[0]
    assert isinstance(data._tokens, np.memmap)
    copy = pickle.loads(pickle.dumps(data))
    assert copy._tokens is None
    assert torch.equal(copy[4][1], data[4][1])


def test_a_loader_batches_the_windows(tmp_path):
    data = TokenWindows(write_ids(tmp_path / "t.bin", np.arange(41)), seq_len=8)
    x, y = next(iter(torch.utils.data.DataLoader(data, batch_size=3)))
    assert x.shape == y.shape == (3, 8) and torch.equal(x + 1, y)


# --------------------------------------------------------------------------- one-line errors
def test_missing_file(tmp_path):
    path = tmp_path / "nope.bin"
    message = one_line_error(lambda: TokenWindows(path, seq_len=4))
    assert f"data.path={path} does not exist" in message and "prepare_tokens" in message


@pytest.mark.parametrize("where", ["directory", "/dev/null"])
def test_not_a_regular_file(tmp_path, where):
    path = str(tmp_path) if where == "directory" else where
    message = one_line_error(lambda: TokenWindows(path, seq_len=4, key="data.val_path"))
    assert f"data.val_path={path} is not a regular file" in message


def test_empty_file(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"")
    assert f"data.path={path} is empty" in one_line_error(lambda: TokenWindows(path, seq_len=4))


def test_size_not_a_multiple_of_the_dtype(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(bytes(1001))
    message = one_line_error(lambda: TokenWindows(path, seq_len=4))
    assert message == (
        f"data.path={path}: 1001 bytes is not a multiple of 2 (uint16); is data.dtype right? uint16 | uint32"
    )
    path.write_bytes(bytes(1002))
    assert "not a multiple of 4 (uint32)" in one_line_error(lambda: TokenWindows(path, 4, dtype="uint32"))


def test_unknown_dtype(tmp_path):
    path = write_ids(tmp_path / "t.bin", np.arange(10))
    message = one_line_error(lambda: TokenWindows(path, seq_len=4, dtype="int8"))
    assert message == "data.dtype='int8' is not allowed; choose one of: uint16, uint32"


def test_dtype_against_meta_json(tmp_path):
    path = write_ids(tmp_path / "t.bin", np.arange(10), meta={"vocab_size": 10, "dtype": "uint32"})
    message = one_line_error(lambda: TokenWindows(path, seq_len=4))
    assert "data.dtype=uint16" in message and "set data.dtype=uint32" in message


def test_fewer_tokens_than_one_window(tmp_path):
    path = write_ids(tmp_path / "t.bin", np.arange(8))
    message = one_line_error(lambda: TokenWindows(path, seq_len=8))
    assert "holds 8 tokens" in message and "data.seq_len+1=9" in message and "lower data.seq_len" in message


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"seq_len": 0}, "data.seq_len=0 must be > 0"),
        ({"seq_len": 4, "vocab_size": -1}, "data.vocab_size=-1 must be >= 0"),
    ],
)
def test_bad_numbers(tmp_path, kwargs, needle):
    path = write_ids(tmp_path / "t.bin", np.arange(10))
    assert needle in one_line_error(lambda: TokenWindows(path, **kwargs))


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"vocab_size": "lots"}', '{"vocab_size": 0}'])
def test_a_broken_meta_json(tmp_path, content):
    path = write_ids(tmp_path / "t.bin", np.arange(10))
    (tmp_path / "meta.json").write_text(content, encoding="utf-8")
    message = one_line_error(lambda: TokenWindows(path, seq_len=4))
    assert str(tmp_path / "meta.json") in message and "data.vocab_size" in message
