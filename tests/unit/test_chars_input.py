"""data=chars refuses paths that are not text files, each with its own one-line reason."""

from __future__ import annotations

import os
import sys

import pytest

from ddtrain.data.chars import read_corpus
from tests.assertions import one_line_error


def test_a_missing_file_is_no_such_file(tmp_path):
    missing = str(tmp_path / "nope.txt")
    message = one_line_error(lambda: read_corpus((missing,)))
    assert f"no such file {missing!r}" in message and "data.paths" in message


@pytest.mark.parametrize("where", ["directory", "/dev/null"])
def test_not_a_regular_file_is_not_called_missing(tmp_path, where):
    path = str(tmp_path) if where == "directory" else where
    message = one_line_error(lambda: read_corpus((path,)))
    assert f"data.paths: {path!r} is not a regular file" in message
    assert "no such file" not in message


def _binary(tmp_path):
    path = tmp_path / "program"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8)
    return path


def _undecodable(tmp_path):  # no NUL byte, but no valid UTF-8 either
    path = tmp_path / "noise.bin"
    path.write_bytes(bytes(range(128, 256)) * 40)
    return path


def _utf16(tmp_path):
    path = tmp_path / "u16.txt"
    path.write_text("plain words " * 40, encoding="utf-16")
    return path


@pytest.mark.parametrize("make", [_binary, _undecodable, _utf16], ids=["nul-bytes", "undecodable", "utf-16"])
def test_a_file_that_is_not_utf8_text_is_refused(tmp_path, make):
    path = str(make(tmp_path))
    message = one_line_error(lambda: read_corpus((path,)))
    assert f"data.paths: {path!r} is not UTF-8 text" in message
    assert "data.paths takes text files" in message and "data=tokens" in message
    assert "prepare_tokens --level bytes" in message


def test_the_running_python_binary_is_refused():
    path = os.path.realpath(sys.executable)
    assert "is not UTF-8 text" in one_line_error(lambda: read_corpus((path,)))


def test_text_with_a_few_stray_bytes_is_still_read(tmp_path):
    path = tmp_path / "scraped.txt"
    path.write_bytes("un café à Paris, ".encode("latin-1") * 20)  # 2 bad bytes in 17
    text = read_corpus((str(path),))
    assert text.count("\ufffd") == 40 and text.startswith("un caf\ufffd")


def test_a_bad_path_after_a_good_one_is_named(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine text\n")
    bad = str(_binary(tmp_path))
    assert repr(bad) in one_line_error(lambda: read_corpus((str(good), bad)))
