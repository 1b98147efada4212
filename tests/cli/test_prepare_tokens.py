"""``python -m ddtrain.data.prepare_tokens`` as a user runs it: files and exit 0, or one line and exit 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest


def prepare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddtrain.data.prepare_tokens", *args],
                          capture_output=True, text=True, timeout=120)


def test_a_good_run_writes_the_files_and_prints_the_override(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"abcdefghij" * 10)
    (tmp_path / "b.txt").write_bytes(b"0123456789" * 10)
    out = tmp_path / "out"
    proc = prepare(str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    train = np.fromfile(out / "train.bin", dtype="<u2")
    val = np.fromfile(out / "val.bin", dtype="<u2")
    assert len(train) == 180 and len(val) == 20  # the default --val-fraction is 0.1
    assert bytes(val.astype(np.uint8)) == b"0123456789" * 2  # the tail of the last file
    assert "200 tokens" in proc.stdout
    assert f"ddtrain model=gpt data=tokens data.path={out / 'train.bin'}" in proc.stdout


@pytest.mark.parametrize(
    "args, needle",
    [
        (["{tmp}/nope.txt", "--out", "{tmp}/out"], "no such file"),
        (["{tmp}/a.txt", "--out", "{tmp}/out", "--val-fraction", "2"],
         "--val-fraction=2.0 must be in [0, 1)"),
        (["{tmp}/a.txt"], "the following arguments are required: --out"),
    ],
    ids=["missing-file", "bad-fraction", "no-out"],
)
def test_bad_input_exits_2(tmp_path, args, needle):
    (tmp_path / "a.txt").write_text("some text\n")
    proc = prepare(*(arg.format(tmp=tmp_path) for arg in args))
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert not (tmp_path / "out").exists()
