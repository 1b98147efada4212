"""Bytes of training state a rank holds, counted from its tensors, and its peak memory.

Categories: parameters, gradients, optimizer state, communication buffers. Each storage is
counted once, in the first category that names it (in that order): without sharding the
gradients are views of the buckets and count as communication buffers. DDP's buckets live
inside its C++ reducer, out of reach; DDP keeps one bucket copy of every gradient in the
parameters' dtype, so its communication buffers are counted as the parameters' bytes.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterable

import torch

CATEGORIES = ("param_bytes", "grad_bytes", "optimizer_bytes", "comm_buffer_bytes")


def _tensors(obj) -> Iterable[torch.Tensor]:
    if torch.is_tensor(obj):
        yield obj.to_local() if hasattr(obj, "to_local") else obj  # a DTensor: this rank's shard
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def state_bytes(engine, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Per category, and ``state_bytes_per_worker`` in all, for this rank now."""
    held = engine.state_tensors()
    groups = {
        "param_bytes": held.get("params", []),
        "comm_buffer_bytes": held.get("comm", []),
        "grad_bytes": held.get("grads", []),
        # torch's ZeroRedundancyOptimizer keeps this rank's state in a local optimizer, ``.optim``.
        "optimizer_bytes": list(_tensors(list(getattr(optimizer, "optim", optimizer).state.values()))),
    }
    seen: set[int] = set()
    out = dict.fromkeys(CATEGORIES, 0)
    for category in ("param_bytes", "comm_buffer_bytes", "grad_bytes", "optimizer_bytes"):
        for t in _tensors(groups[category]):
            storage = t.untyped_storage()
            if storage.data_ptr() in seen or storage.nbytes() == 0:
                continue
            seen.add(storage.data_ptr())
            out[category] += storage.nbytes()
    out["comm_buffer_bytes"] += held.get("hidden_comm_bytes", 0)
    out["state_bytes_per_worker"] = sum(out[c] for c in CATEGORIES)
    return out


def peak_bytes(device: torch.device) -> int:
    """The most memory this process has held: the GPU's allocated peak, else the peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # macOS reports bytes, Linux KiB


def describe(counted: dict[str, int]) -> str:
    mib = {k: v / 2**20 for k, v in counted.items()}
    return (f"{mib['state_bytes_per_worker']:.1f} MiB of training state per rank: parameters "
            f"{mib['param_bytes']:.1f}, gradients {mib['grad_bytes']:.1f}, optimizer "
            f"{mib['optimizer_bytes']:.1f}, communication buffers {mib['comm_buffer_bytes']:.1f} MiB")
