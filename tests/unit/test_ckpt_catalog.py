"""A checkpoint directory: newest first, bad files skipped with one line each, the last K kept."""

from __future__ import annotations

import builtins
import os

import pytest
import torch

from ddtrain.ckpt.catalog import (
    checkpoint_path,
    list_checkpoints,
    newest_loadable,
    newest_valid,
    prune,
    remove_stale_temps,
    set_aside_newer,
)
from ddtrain.ckpt.file import encode, read_verified, save, temp_path


def _save_steps(directory, steps):
    for step in steps:
        save(checkpoint_path(directory, step), {"step": step, "w": torch.full((4,), float(step))})


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


class _RunsOnLoad:
    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return builtins.exec, (self.source,)


def test_checkpoint_path_pads_the_step_and_refuses_a_negative_one(tmp_path):
    assert checkpoint_path(tmp_path, 100) == tmp_path / "step-00000100.ckpt"
    assert checkpoint_path(tmp_path, 123456789).name == "step-123456789.ckpt"
    with pytest.raises(ValueError, match="step is -1"):
        checkpoint_path(tmp_path, -1)


def test_list_is_newest_first_and_ignores_everything_but_checkpoints(tmp_path):
    _save_steps(tmp_path, [100, 2000, 300, 123456789])
    for name in [".step-00000400.ckpt.tmp-4242", "step-00000500.ckpt.bak", "notes.txt",
                 "step-500.ckpt", "step-000000600.ckpt"]:  # too short; a non-canonical 9-digit alias
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "step-00000700.ckpt").mkdir()
    assert list_checkpoints(tmp_path) == [
        (step, checkpoint_path(tmp_path, step)) for step in (123456789, 2000, 300, 100)
    ]


def test_a_missing_directory_has_no_checkpoints(tmp_path):
    missing = tmp_path / "never-created"
    assert list_checkpoints(missing) == []
    assert newest_valid(missing, pytest.fail) is None
    assert newest_loadable(missing, pytest.fail) is None
    assert prune(missing, keep=1) == [] and remove_stale_temps(missing) == []


def test_newest_valid_skips_bad_files_with_one_line_each_and_returns_the_previous(tmp_path):
    _save_steps(tmp_path, [100, 200, 300, 400])
    _truncate(checkpoint_path(tmp_path, 400))
    _flip_last_byte(checkpoint_path(tmp_path, 300))
    warnings = []
    step, path, data = newest_valid(tmp_path, warnings.append)
    assert (step, path) == (200, checkpoint_path(tmp_path, 200))
    assert data == path.read_bytes()
    assert len(warnings) == 2 and all("\n" not in line for line in warnings)
    assert warnings[0].startswith(f"skipping {checkpoint_path(tmp_path, 400)}: truncated: ")
    assert warnings[1].startswith(f"skipping {checkpoint_path(tmp_path, 300)}: checksum mismatch")


def test_newest_valid_is_none_when_every_file_is_bad(tmp_path):
    _save_steps(tmp_path, [100])
    checkpoint_path(tmp_path, 100).write_bytes(b"")
    warnings = []
    assert newest_valid(tmp_path, warnings.append) is None
    assert warnings == [f"skipping {checkpoint_path(tmp_path, 100)}: empty file (0 bytes), "
                        "not a ddtrain checkpoint"]


def test_newest_loadable_skips_a_hostile_newest_file_without_running_it(tmp_path):
    _save_steps(tmp_path, [100])
    marker = tmp_path / "ran"
    hostile = checkpoint_path(tmp_path, 200)
    hostile.write_bytes(encode({"step": 200, "x": _RunsOnLoad(f"open({str(marker)!r}, 'w').close()")}))

    # The checksum is right, so the file-level check alone accepts it ...
    assert newest_valid(tmp_path, pytest.fail)[0] == 200
    # ... and only decoding with the safe loader catches it.
    warnings = []
    step, path, state = newest_loadable(tmp_path, warnings.append)
    assert (step, path, state["step"]) == (100, checkpoint_path(tmp_path, 100), 100)
    assert torch.equal(state["w"], torch.full((4,), 100.0))
    assert len(warnings) == 1 and warnings[0].startswith(f"skipping {hostile}: ")
    assert "refused as unsafe" in warnings[0] and "not executed" in warnings[0]
    assert not marker.exists()


def test_prune_keeps_the_newest_k_by_step(tmp_path):
    _save_steps(tmp_path, [100, 200, 300, 400, 500])
    (tmp_path / "notes.txt").write_text("mine")
    removed = prune(tmp_path, keep=2)
    assert removed == [checkpoint_path(tmp_path, s) for s in (300, 200, 100)]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [500, 400]
    assert (tmp_path / "notes.txt").exists()
    assert prune(tmp_path, keep=5) == []
    with pytest.raises(ValueError, match="keep at least 1"):
        prune(tmp_path, keep=0)


def test_set_aside_newer_moves_the_skipped_files_above_the_resume_point(tmp_path):
    _save_steps(tmp_path, [100, 200, 300])
    _truncate(checkpoint_path(tmp_path, 300))
    step, _, _ = newest_valid(tmp_path, lambda line: None)
    bad = checkpoint_path(tmp_path, 300)
    assert set_aside_newer(tmp_path, step) == [bad.with_name(bad.name + ".skipped")]
    assert not bad.exists() and bad.with_name(bad.name + ".skipped").exists()  # kept for inspection
    # Without that, a later prune(keep=1) would keep the truncated 300 and delete the good 200.
    assert prune(tmp_path, keep=1) == [checkpoint_path(tmp_path, 100)]
    read_verified(checkpoint_path(tmp_path, 200))


def test_remove_stale_temps_deletes_only_the_writers_temporaries(tmp_path):
    _save_steps(tmp_path, [100])
    stale = [temp_path(checkpoint_path(tmp_path, 200)), tmp_path / ".step-00000300.ckpt.tmp-1"]
    for path in stale:
        path.write_bytes(b"partial")
    kept = [tmp_path / name for name in (".step-00000300.ckpt.tmp-x", "step-00000300.ckpt.tmp-1", "x.tmp-1")]
    for path in kept:
        path.write_bytes(b"not ours")
    assert remove_stale_temps(tmp_path) == sorted(stale)
    assert sorted(os.listdir(tmp_path)) == sorted(["step-00000100.ckpt"] + [p.name for p in kept])
