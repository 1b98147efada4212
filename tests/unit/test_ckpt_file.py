"""The checkpoint file: exact round trip, truncation and corruption caught before unpickling,
hostile pickles refused without running, and writes that are all-or-nothing."""

from __future__ import annotations

import builtins
import dataclasses
import errno
import hashlib
import io
import json
import os
import pickle
import shlex
import stat

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ddtrain.ckpt import file as ckpt_file
from ddtrain.ckpt.file import CheckpointError, decode, encode, load, read_verified, save, write_atomic


# --------------------------------------------------------------------------- helpers
def _with_header(payload: bytes) -> bytes:
    """Any payload behind a header with a CORRECT length and checksum, built independently of
    encode(), so only the unpickler stands between the payload and execution."""
    header = {"format": 1, "payload_bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    return b"DDTRAIN-CKPT " + json.dumps(header).encode() + b"\n" + payload


def _error(data: bytes, source: str = "ckpt-under-test") -> str:
    with pytest.raises(CheckpointError) as info:
        decode(data, source)
    message = str(info.value)
    assert "\n" not in message and source in message
    return message


def _header_length(data: bytes) -> int:
    return data.index(b"\n") + 1


def _assert_identical(a, b, where="state"):
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys differ"
        for key in a:
            _assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _warmup(step: int) -> float:
    return min(1.0, (step + 1) / 10)


def _training_objects():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    adamw = torch.optim.AdamW(model[:2].parameters(), lr=1e-2, fused=True)
    sgd = torch.optim.SGD(model[2].parameters(), lr=0.1, momentum=0.9)
    schedule = LambdaLR(adamw, _warmup)
    return model, adamw, sgd, schedule


def _train_step(model, adamw, sgd, schedule, seed: int) -> float:
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(seed))
    loss = model(x).square().mean()
    adamw.zero_grad()
    sgd.zero_grad()
    loss.backward()
    adamw.step()
    sgd.step()
    schedule.step()
    return loss.item()


# --------------------------------------------------------------------------- round trip
def test_round_trip_of_training_state_is_exact_and_training_continues_identically(tmp_path):
    model, adamw, sgd, schedule = _training_objects()
    loss = _train_step(model, adamw, sgd, schedule, seed=1)
    state = {
        "model": model.state_dict(),
        "optimizer": adamw.state_dict(),
        "sgd": sgd.state_dict(),
        "schedule": schedule.state_dict(),
        "step": 1,
        "loss": loss,
        "data": {"epoch": 0, "position": 3, "order": [2, 0, 1]},
        "rng": {"cpu": torch.get_rng_state(), "ranks": [torch.get_rng_state(), torch.get_rng_state()]},
        "config": json.dumps({"trainer": {"ckpt_every": 100}, "model": {"name": "mlp"}}),
        "misc": {"none": None, "flag": True, "inf": float("inf"), "pair": (1, 2.5), "empty": []},
    }
    path = tmp_path / "step-00000001.ckpt"
    save(path, state)
    loaded = load(path)
    _assert_identical(state, loaded)
    _assert_identical(state, decode(read_verified(path)))  # the rank-0 read + broadcast + decode path

    model2, adamw2, sgd2, schedule2 = _training_objects()
    model2.load_state_dict(loaded["model"])
    adamw2.load_state_dict(loaded["optimizer"])
    sgd2.load_state_dict(loaded["sgd"])
    schedule2.load_state_dict(loaded["schedule"])
    assert schedule2.get_last_lr() == schedule.get_last_lr()
    # The restored copy must take the very same next step: moments, momentum, step counts, lr.
    _train_step(model, adamw, sgd, schedule, seed=2)
    _train_step(model2, adamw2, sgd2, schedule2, seed=2)
    _assert_identical(model.state_dict(), model2.state_dict())
    _assert_identical(adamw.state_dict(), adamw2.state_dict())

    torch.set_rng_state(loaded["rng"]["cpu"])
    after_restore = torch.rand(4)
    torch.set_rng_state(state["rng"]["cpu"])
    assert torch.equal(after_restore, torch.rand(4))


def test_the_header_is_one_readable_line_that_describes_the_payload():
    data = encode({"w": torch.arange(5)})
    line, payload = data.split(b"\n", 1)
    assert line.startswith(b"DDTRAIN-CKPT ")
    header = json.loads(line.removeprefix(b"DDTRAIN-CKPT "))
    assert header == {"format": 1, "payload_bytes": len(payload),
                      "sha256": hashlib.sha256(payload).hexdigest()}
    assert payload[:2] == b"PK"  # torch.save's zip, untouched


def test_encode_refuses_a_non_dict():
    with pytest.raises(TypeError, match="dict"):
        encode([torch.ones(1)])


# --------------------------------------------------------------------------- truncation, corruption
GOOD = encode({"w": torch.arange(1000, dtype=torch.float32), "step": 7})
HEADER = _header_length(GOOD)
PAYLOAD = len(GOOD) - HEADER


@pytest.mark.parametrize("cut, expected", [
    (5, "truncated: 5 bytes, inside the header"),
    (HEADER - 1, f"truncated: {HEADER - 1} bytes, inside the header"),  # the newline is missing
    (HEADER, f"truncated: 0 of {PAYLOAD} payload bytes"),
    (HEADER + PAYLOAD // 2, f"truncated: {PAYLOAD // 2} of {PAYLOAD} payload bytes"),
    (len(GOOD) - 1, f"truncated: {PAYLOAD - 1} of {PAYLOAD} payload bytes"),
], ids=["in-magic", "header-no-newline", "after-header", "mid-payload", "one-byte-short"])
def test_truncation_is_reported_wherever_the_file_ends(cut, expected):
    assert expected in _error(GOOD[:cut])


@pytest.mark.parametrize("offset", [0, PAYLOAD // 2, PAYLOAD - 1])
def test_a_flipped_payload_byte_is_a_checksum_mismatch(offset):
    data = bytearray(GOOD)
    data[HEADER + offset] ^= 0x01
    assert "checksum mismatch" in _error(bytes(data))


def _header_with(**fields) -> bytes:
    payload = GOOD[HEADER:]
    header = {"format": 1, "payload_bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    header.update(fields)
    return b"DDTRAIN-CKPT " + json.dumps(header).encode() + b"\n" + payload


def _bare_torch_save() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("data, expected", [
    (b"", "empty file (0 bytes)"),
    (b"\x00\x13garbage" * 300, "not a ddtrain checkpoint"),
    (b"OTHER-CKPT " + GOOD[len(b"DDTRAIN-CKPT "):], "not a ddtrain checkpoint"),
    (_bare_torch_save(), "not a ddtrain checkpoint"),
    (GOOD.replace(b'"format"', b"'format'", 1), "corrupted header: not ASCII JSON"),
    (b"DDTRAIN-CKPT " + b"x" * 2000, "corrupted header: no end of line in the first 1024 bytes"),
    (_header_with(format=2), "format version 2 is not supported"),
    (_header_with(payload_bytes=True), "payload_bytes is True"),
    (_header_with(payload_bytes=-1), "payload_bytes is -1"),
    (_header_with(sha256="00"), "sha256 is '00'"),
    (GOOD + b"\n", "1 unexpected bytes after the payload"),
], ids=["empty", "garbage", "wrong-magic", "bare-torch-save", "header-json", "header-unbounded",
        "future-version", "length-bool", "length-negative", "sha-short", "trailing-bytes"])
def test_files_that_are_not_checkpoints_get_a_clear_error(data, expected):
    assert expected in _error(data)


def test_a_top_level_non_dict_is_refused():
    buffer = io.BytesIO()
    torch.save([torch.ones(1)], buffer)
    assert "payload is a list, not a dict" in _error(_with_header(buffer.getvalue()))


def test_a_payload_that_is_not_a_torch_archive_is_unreadable_not_a_crash():
    assert "payload unreadable by torch.load" in _error(_with_header(b"PK\x03\x04" + b"\x00" * 64))


# --------------------------------------------------------------------------- hostile pickles
class _RunsOnLoad:
    """Unpickling this calls ``func(*args)``: the classic pickle exploit."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _exploit(kind: str, marker) -> _RunsOnLoad:
    if kind == "os.system":
        return _RunsOnLoad(os.system, f"touch {shlex.quote(str(marker))}")
    return _RunsOnLoad(builtins.exec, f"open({str(marker)!r}, 'w').close()")


def _torch_zip(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _torch_legacy(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


CONTAINERS = {
    "torch-zip": _torch_zip,  # what encode() writes
    "torch-legacy": _torch_legacy,  # torch's older non-zip format, also accepted by torch.load
    "raw-pickle": lambda obj: pickle.dumps(obj, protocol=2),
}
EXPLOITS = {"os.system": "posix.system" if os.name == "posix" else "system", "builtins.exec": "exec"}


@pytest.mark.parametrize("kind", EXPLOITS)
def test_the_exploits_are_live_under_an_unsafe_loader(tmp_path, kind):
    """Control: without this, 'the marker is absent' below could pass for a dud payload."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"x": _exploit(kind, marker)}))
    assert marker.exists()


@pytest.mark.parametrize("container", CONTAINERS)
@pytest.mark.parametrize("kind", EXPLOITS)
def test_a_hostile_payload_with_a_correct_checksum_is_refused_without_running(tmp_path, kind, container):
    marker = tmp_path / "ran"
    data = _with_header(CONTAINERS[container]({"model": {}, "x": _exploit(kind, marker)}))
    path = tmp_path / "step-00000100.ckpt"
    path.write_bytes(data)
    assert read_verified(path) == data  # the checksum holds: only the unpickler can stop it
    for attempt in (lambda: decode(data, str(path)), lambda: load(path)):
        with pytest.raises(CheckpointError) as info:
            attempt()
        message = str(info.value)
        assert "refused as unsafe" in message and "not executed" in message
        assert f"global {EXPLOITS[kind]}" in message and str(path) in message and "\n" not in message
    assert not marker.exists()


def test_encode_of_a_hostile_object_makes_a_file_decode_refuses(tmp_path):
    """encode() itself wraps torch's zip with a correct checksum: the decode side must still refuse."""
    marker = tmp_path / "ran"
    data = encode({"x": _exploit("builtins.exec", marker)})
    assert "refused as unsafe" in _error(data)
    assert not marker.exists()


def test_a_bare_hostile_torch_save_file_is_refused_before_any_unpickling(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    path = tmp_path / "step-00000100.ckpt"
    torch.save({"x": _exploit("os.system", marker)}, path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    for attempt in (read_verified, load):
        with pytest.raises(CheckpointError, match="not a ddtrain checkpoint"):
            attempt(path)
    assert not marker.exists()


def test_torchs_escape_hatch_variable_cannot_turn_the_safe_loader_off(tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 makes torch.load unsafe by default; an explicit
    weights_only=True must win over it."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    assert "refused as unsafe" in _error(encode({"x": _exploit("builtins.exec", marker)}))
    assert not marker.exists()


@dataclasses.dataclass
class _NotAllowed:
    value: int = 1


def test_a_custom_class_is_refused_by_name():
    assert "_NotAllowed" in _error(encode({"x": _NotAllowed()}))


# --------------------------------------------------------------------------- reading files
def test_read_verified_returns_the_file_bytes_without_unpickling(tmp_path, monkeypatch):
    path = tmp_path / "step-00000007.ckpt"
    path.write_bytes(GOOD)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("read_verified unpickled"))
    assert read_verified(path) == GOOD


def test_a_missing_or_unreadable_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        read_verified(tmp_path / "absent.ckpt")
    with pytest.raises(CheckpointError, match="unreadable"):
        load(tmp_path)  # a directory


def test_checkpoint_error_is_one_line_and_crosses_process_boundaries():
    error = CheckpointError("/ck/step-1.ckpt", "line one\nline two")
    assert str(error) == "checkpoint /ck/step-1.ckpt: line one line two"
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.source, copy.reason, str(copy)) == (error.source, error.reason, str(error))


# --------------------------------------------------------------------------- atomic writes
def test_write_atomic_syncs_the_file_renames_then_syncs_the_directory(tmp_path, monkeypatch):
    path = tmp_path / "step-00000100.ckpt"
    path.write_bytes(b"old")
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        info = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(info.st_mode) else "file", info.st_ino))
        real_fsync(fd)

    def replace(src, dst):
        # The moment of publishing: the temp holds everything, the target is still the old file.
        assert open(src, "rb").read() == b"new contents" and path.read_bytes() == b"old"
        events.append(("replace", os.path.basename(src), os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomic(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    file_inode, dir_inode = path.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", "file", file_inode),
                      ("replace", f".step-00000100.ckpt.tmp-{os.getpid()}", file_inode),
                      ("fsync", "dir", dir_inode)]
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, failing):
    path = tmp_path / "step-00000100.ckpt"
    save(path, {"step": 100})

    def disk_full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, failing, disk_full)
    with pytest.raises(OSError, match="No space left"):
        save(path, {"step": 200})
    assert load(path) == {"step": 100}
    assert os.listdir(tmp_path) == [path.name]


def test_write_atomic_creates_the_directory_and_stages_next_to_the_target(tmp_path):
    path = tmp_path / "a" / "b" / "step-00000003.ckpt"
    write_atomic(path, b"x")
    assert path.read_bytes() == b"x"
    assert ckpt_file.temp_path(path).parent == path.parent  # a rename never crosses file systems
