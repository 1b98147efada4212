"""One checkpoint file: a checksummed header line, then a ``torch.save`` payload.

Layout (``head -1 step-00000100.ckpt`` shows the header)::

    DDTRAIN-CKPT {"format": 1, "payload_bytes": 123456, "sha256": "<64 hex digits>"}\\n
    <payload_bytes bytes written by torch.save(obj)>

Why a header of our own: a resume must tell a truncated or corrupted file from a good one before
it hands a single byte to an unpickler, and torch's zip reader does not reliably notice a flipped
byte in the payload (it can load altered values without complaint). The header is plain ASCII
JSON, so checking it runs no pickle code at all.

Why ``weights_only=True`` and never a fallback: a pickle can name any importable callable
(``os.system``, ``builtins.exec``) and have it called while loading. torch's weights-only
unpickler accepts only tensors, containers and primitive types, which is everything a checkpoint
needs; a file asking for more is refused, never retried with the unsafe loader. torch keeps an
explicit ``weights_only=True`` even when ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is set.

Writes are atomic: a temporary file in the same directory, fsynced, renamed over the target,
then the directory fsynced, so a reader sees the old file or the complete new one, never a part.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
from pathlib import Path

import torch

MAGIC = b"DDTRAIN-CKPT "
FORMAT_VERSION = 1
# The header is ~130 bytes; a bound keeps a garbage file without newlines from being scanned whole.
_MAX_HEADER_BYTES = 1024
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# torch names the refused global as "GLOBAL posix.system whose module ..." or "GLOBAL exec was not".
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+)")
_MAX_DETAIL_CHARS = 200


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, truncated, corrupted, or unsafe to unpickle.

    ``str()`` is one line, ``checkpoint <source>: <reason>``; ``reason`` alone is for callers
    that name the file themselves.
    """

    def __init__(self, source: str, reason: str):
        # Both go to args so the error survives pickling between processes.
        super().__init__(str(source), " ".join(str(reason).split()))

    @property
    def source(self) -> str:
        return self.args[0]

    @property
    def reason(self) -> str:
        return self.args[1]

    def __str__(self) -> str:
        return f"checkpoint {self.source}: {self.reason}"


def encode(obj: dict) -> bytes:
    """The file bytes for ``obj``: header line + ``torch.save(obj)``."""
    if not isinstance(obj, dict):
        raise TypeError(f"a checkpoint holds a dict, got {type(obj).__name__}; wrap the state in a dict")
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getbuffer()
    header = {
        "format": FORMAT_VERSION,
        "payload_bytes": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    # One join: a model-sized payload is copied once, not once per concatenation.
    return b"".join((MAGIC, json.dumps(header).encode("ascii"), b"\n", payload))


def _verified_payload(data: bytes | bytearray | memoryview, source: str) -> memoryview:
    """The payload of ``data`` after checking magic, format, length and SHA-256; unpickles nothing."""
    view = memoryview(data).cast("B")
    if len(view) == 0:
        raise CheckpointError(source, "empty file (0 bytes), not a ddtrain checkpoint")
    head = bytes(view[:_MAX_HEADER_BYTES])
    if not head.startswith(MAGIC):
        if MAGIC.startswith(head):
            raise CheckpointError(source, f"truncated: {len(head)} bytes, inside the header")
        raise CheckpointError(
            source,
            f"not a ddtrain checkpoint: starts with {head[:16]!r}, expected {MAGIC.decode().strip()!r}",
        )
    end = head.find(b"\n")
    if end < 0:
        if len(view) < _MAX_HEADER_BYTES:
            raise CheckpointError(source, f"truncated: {len(view)} bytes, inside the header")
        raise CheckpointError(
            source, f"corrupted header: no end of line in the first {_MAX_HEADER_BYTES} bytes"
        )
    expected_bytes, expected_sha = _parse_header(head[len(MAGIC):end], source)
    payload = view[end + 1:]
    if len(payload) < expected_bytes:
        raise CheckpointError(source, f"truncated: {len(payload)} of {expected_bytes} payload bytes")
    if len(payload) > expected_bytes:
        raise CheckpointError(
            source, f"corrupted: {len(payload) - expected_bytes} unexpected bytes after the payload"
        )
    actual_sha = hashlib.sha256(payload).hexdigest()
    if actual_sha != expected_sha:
        raise CheckpointError(
            source,
            f"checksum mismatch: payload sha256 {actual_sha[:16]}..., header says {expected_sha[:16]}...",
        )
    return payload


def _parse_header(text: bytes, source: str) -> tuple[int, str]:
    """(payload_bytes, sha256) from the header's JSON, with every field checked."""
    try:
        header = json.loads(text.decode("ascii"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(source, f"corrupted header: not ASCII JSON ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(source, "corrupted header: not a JSON object")
    version = header.get("format")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            source,
            f"format version {version!r} is not supported (this ddtrain reads {FORMAT_VERSION}); "
            "load it with the ddtrain that wrote it",
        )
    size, sha = header.get("payload_bytes"), header.get("sha256")
    # bool is an int in Python; a JSON true is not a length.
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CheckpointError(source, f"corrupted header: payload_bytes is {size!r}, not a byte count")
    if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
        raise CheckpointError(source, f"corrupted header: sha256 is {sha!r}, not 64 hex digits")
    return size, sha


def _refusal_detail(message: str) -> str:
    """The part of torch's multi-paragraph weights-only message that says what was refused."""
    named = _REFUSED_GLOBAL.search(message)
    if named:
        return f"global {named.group(1).rstrip('.')}"
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Check the documentation")]
    detail = lines[-1] if lines else message
    return detail.removeprefix("WeightsUnpickler error:").strip()[:_MAX_DETAIL_CHARS]


def decode(data: bytes | bytearray | memoryview, source: str = "<bytes>") -> dict:
    """The dict in ``data`` (file bytes from ``encode``), loaded with torch's weights-only unpickler."""
    payload = _verified_payload(data, source)
    try:
        obj = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu", mmap=False)
    except pickle.UnpicklingError as e:
        # The checksum matched, so these are the bytes the writer meant: either a different
        # program wrote them or someone crafted them. Either way they are not run.
        raise CheckpointError(
            source,
            f"payload refused as unsafe by torch's weights-only loader ({_refusal_detail(str(e))}), "
            "not executed; a ddtrain checkpoint holds only tensors and plain values",
        ) from None
    except Exception as e:  # any failure to read untrusted bytes means the file is unusable
        first_line = (str(e).splitlines() or [type(e).__name__])[0][:_MAX_DETAIL_CHARS]
        raise CheckpointError(source, f"payload unreadable by torch.load: {first_line}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(
            source, f"payload is a {type(obj).__name__}, not a dict; not a ddtrain checkpoint"
        )
    return obj


def _read(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(str(path), "missing") from None
    except OSError as e:
        raise CheckpointError(str(path), f"unreadable: {e.strerror or e}") from None


def read_verified(path: str | os.PathLike) -> bytes:
    """The whole file at ``path`` once its header, length and checksum check out (nothing unpickled)."""
    data = _read(path)
    _verified_payload(data, str(path))
    return data


def load(path: str | os.PathLike) -> dict:
    return decode(_read(path), str(path))


def temp_path(path: str | os.PathLike) -> Path:
    """Where ``write_atomic`` stages ``path``: hidden, same directory (a rename never crosses
    file systems), tagged with the writer's pid."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Put ``data`` at ``path`` so that ``path`` is always the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(path)
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()  # Python's buffer to the kernel ...
            os.fsync(f.fileno())  # ... and the kernel's to the disk, before the rename publishes it
        os.replace(temp, path)
        # The rename lives in the directory; without this a power loss can undo it.
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def save(path: str | os.PathLike, obj: dict) -> None:
    write_atomic(path, encode(obj))
