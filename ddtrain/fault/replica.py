"""Replica consistency: every rank must hold the same model, built from the same config, and
keep it bit-identical while training.

Data parallelism is correct only if all replicas are the same function with the same weights.
Two ways it silently breaks: a rank starts from a different model (another ddtrain version, a
different override, a stale config on one node), or replicas drift apart during training
(rank-local randomness, a nondeterministic op in the update). Both train "fine" and give wrong
results, so both stop the job.

At start-up ``check_replicas`` compares a SHA-256 digest of each rank's ``describe_replica``
(ddtrain version, parameter and buffer names / shapes / dtypes, flat config, config hash) with
one all-gather of 32 bytes per rank. Every ``comm.verify_every`` steps ``verify_replicas``
all-gathers one exact integer checksum per parameter. Both raise ``JobError`` with the same
message on every rank, because the message is built only from gathered data.

Buffers are part of the structure check but not of the checksums: BatchNorm running statistics
are updated from each rank's own batch, and ddtrain does not broadcast buffers, so their values
legitimately differ between ranks; their names, shapes and dtypes never should.

Messages (one line each). At start-up, for the lowest rank k whose digest differs from rank 0's:

    replica mismatch at start-up, rank <k> vs rank 0[ (ranks <k>, <j> differ from rank 0)]:
    <what>; every rank must run the same ddtrain version with the same overrides; check the
    ranks' environments and configs

where ``<what>`` is each of these that applies, in this order, joined with ", and ":

    ddtrain version <a> on rank 0 but <b> on rank <k>
    config key <key> is <a> on rank 0 but <b> on rank <k>[ (first of <n> differing config keys)]
        (values as JSON; "absent" for a key one rank lacks; " (parameters agree)" follows
        when the parameters do)
    <n> of <m> parameters differ (first: <detail>)
    <n> of <m> buffers differ (first: <detail>)

and ``<detail>`` is the first difference in rank 0's order, one of:

    <name> has shape [..] on rank 0 but [..] on rank <k>
    <name> has dtype <a> on rank 0 but <b> on rank <k>
    <name> [..] <dtype> is missing on rank <k>
    <name> [..] <dtype> exists only on rank <k>

(when only the order differs: "parameters are in a different order (first: position <i> holds
<a> on rank 0 but <b> on rank <k>)"). Divergence, naming every rank that differs from rank 0:

    replicas diverged at step <s>: rank <k> differs (or: ranks <k>, <j> differ) from rank 0
    in <n> of <m> parameters, first <name>; replicas must stay bit-identical; look for
    rank-local randomness or nondeterministic ops in the update; resume from the last
    checkpoint with trainer.resume=auto
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

import ddtrain
from ddtrain.dist.group import DistContext, all_gather_rows
from ddtrain.errors import JobError

STARTUP_FIX = ("every rank must run the same ddtrain version with the same overrides; "
               "check the ranks' environments and configs")
DIVERGENCE_FIX = ("replicas must stay bit-identical; look for rank-local randomness or nondeterministic "
                  "ops in the update; resume from the last checkpoint with trainer.resume=auto")

_STORE_KEY = "ddtrain/replica/{rank}"


# --------------------------------------------------------------------------- the descriptor
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def _entries(named: Any) -> list[list[Any]]:
    return [[name, list(t.shape), str(t.dtype).removeprefix("torch.")] for name, t in named]


def describe_replica(model: nn.Module, flat_cfg: dict[str, Any]) -> dict[str, Any]:
    """What must be identical on every rank, as plain JSON-able data (lists, not tuples, so that
    a JSON round trip gives back an equal object)."""
    config = json.loads(json.dumps(flat_cfg))  # tuples -> lists, and a copy
    return {
        "ddtrain": ddtrain.__version__,
        "parameters": _entries(model.named_parameters()),
        "buffers": _entries(model.named_buffers()),
        "config": config,
        "config_hash": hashlib.sha256(_canonical(config).encode()).hexdigest(),
    }


# --------------------------------------------------------------------------- naming the difference
def _config_difference(ref: dict, other: dict, r0: int, rk: int) -> str | None:
    # Compare JSON texts, not Python values: 1 == 1.0 == True in Python, but not in the digest.
    def show(cfg: dict, key: str) -> str:
        return json.dumps(cfg[key]) if key in cfg else "absent"

    keys = list(ref) + [k for k in other if k not in ref]  # ref's order: the order of the config
    differing = [k for k in keys if show(ref, k) != show(other, k)]
    if not differing:
        return None
    key = differing[0]
    text = f"config key {key} is {show(ref, key)} on rank {r0} but {show(other, key)} on rank {rk}"
    if len(differing) > 1:
        text += f" (first of {len(differing)} differing config keys)"
    return text


def _tensor_difference(kind: str, ref: list, other: list, r0: int, rk: int) -> str | None:
    """``<n> of <m> <kind>s differ (first: ...)``, or an order difference, or None."""
    ref_by, other_by = {e[0]: e for e in ref}, {e[0]: e for e in other}

    def show(e: list) -> str:
        return f"{e[0]} {e[1]} {e[2]}"

    first = None
    for i, (a, b) in enumerate(zip(ref, other)):
        if a[0] == b[0]:
            if a[1] != b[1]:
                first = f"{a[0]} has shape {a[1]} on rank {r0} but {b[1]} on rank {rk}"
            elif a[2] != b[2]:
                first = f"{a[0]} has dtype {a[2]} on rank {r0} but {b[2]} on rank {rk}"
        elif a[0] not in other_by:
            first = f"{show(a)} is missing on rank {rk}"
        elif b[0] not in ref_by:
            first = f"{show(b)} exists only on rank {rk}"
        else:
            first = f"position {i} holds {a[0]} on rank {r0} but {b[0]} on rank {rk}"
        if first:
            break
    if first is None and len(ref) != len(other):  # one list is the other plus a tail
        n = min(len(ref), len(other))
        first = (f"{show(ref[n])} is missing on rank {rk}" if len(ref) > n
                 else f"{show(other[n])} exists only on rank {rk}")
    if first is None:
        return None
    names = list(ref_by) + [n for n in other_by if n not in ref_by]
    count = sum(ref_by.get(n) != other_by.get(n) for n in names)
    if count == 0:
        return f"{kind}s are in a different order (first: {first})"
    return f"{count} of {len(ref)} {kind}s differ (first: {first})"


def _difference(ref: dict, other: dict, r0: int, rk: int) -> str | None:
    if _canonical(ref) == _canonical(other):
        return None
    parts = []
    version, other_version = ref.get("ddtrain"), other.get("ddtrain")
    if version != other_version:
        parts.append(f"ddtrain version {version} on rank {r0} but {other_version} on rank {rk}")
    config = _config_difference(ref.get("config", {}), other.get("config", {}), r0, rk)
    params = _tensor_difference("parameter", ref.get("parameters", []), other.get("parameters", []), r0, rk)
    buffers = _tensor_difference("buffer", ref.get("buffers", []), other.get("buffers", []), r0, rk)
    if config:
        parts.append(config if params else config + " (parameters agree)")
    parts += [p for p in (params, buffers) if p]
    if not parts:  # a field this version does not know (a descriptor from another version)
        field = next(k for k in sorted(set(ref) | set(other))
                     if _canonical(ref.get(k)) != _canonical(other.get(k)))
        parts.append(f"descriptor field {field} differs between rank {r0} and rank {rk}")
    return ", and ".join(parts)


def _startup_message(what: str, r0: int, rk: int, differing: Sequence[int] = ()) -> str:
    ranks = f" (ranks {', '.join(map(str, differing))} differ from rank {r0})" if len(differing) > 1 else ""
    return f"replica mismatch at start-up, rank {rk} vs rank {r0}{ranks}: {what}; {STARTUP_FIX}"


def first_difference(ref: dict, other: dict, ref_rank: int, other_rank: int) -> str | None:
    """The start-up mismatch message for two descriptors, or None when they are identical."""
    what = _difference(ref, other, ref_rank, other_rank)
    return None if what is None else _startup_message(what, ref_rank, other_rank)


# --------------------------------------------------------------------------- start-up check
def check_replicas(ctx: DistContext, model: nn.Module, flat_cfg: dict[str, Any]) -> None:
    """Raise JobError on every rank unless all ranks describe the same replica. No-op on one process.

    Common case: one store write per rank (its descriptor, a few KiB, to rank 0's TCPStore) and
    one all-gather of a 32-byte digest. The descriptors are read back only on a mismatch, to
    name the difference. Each rank writes its own before the gather, so once the gather has
    returned every key exists (and a key left by an earlier attempt on a reused store, such as
    torchrun's agent store after a restart, has been overwritten).
    """
    if ctx.backend is None:
        return
    if ctx.store is None:
        raise RuntimeError("check_replicas needs the rendezvous store (ctx.store is None); "
                           "build the context with init_distributed")
    desc = describe_replica(model, flat_cfg)
    # Insertion order kept in the stored text, so "first" means first in model / config order;
    # the digest is over the canonical (key-sorted) text, so config key order is not a mismatch.
    ctx.store.set(_STORE_KEY.format(rank=ctx.rank), json.dumps(desc))
    digest = hashlib.sha256(_canonical(desc).encode()).digest()
    rows = all_gather_rows(ctx, torch.frombuffer(bytearray(digest), dtype=torch.uint8))
    differing = [r for r in range(ctx.world_size) if not torch.equal(rows[r], rows[0])]
    if not differing:
        return
    k = differing[0]
    # Every rank reads the same two stored texts, so every rank builds the same message.
    ref = json.loads(ctx.store.get(_STORE_KEY.format(rank=0)))
    other = json.loads(ctx.store.get(_STORE_KEY.format(rank=k)))
    what = _difference(ref, other, 0, k) or "the descriptors' digests differ"  # only on a hash collision
    raise JobError(_startup_message(what, 0, k, differing))


# --------------------------------------------------------------------------- checksums
# A parameter's bytes are read as words u_i: integers of its element width (64-bit elements as
# two 32-bit words), shifted by 2^31 so that 0 <= u_i < 2^32. Its checksum is
#     S = sum_i u_i * (i + 1)  mod  P1 * P2,
# kept as the residues mod the primes P1 and P2 (CRT), packed into one int64 as (S1 << 31) | S2.
# Every intermediate stays below 2^63 (u_i * (i + 1) < 2^32 * P2), so there is no overflow, and
# integer sums give the same result in any reduction order, on any device. For dtypes up to 32
# bits and parameters under P2 words, any single changed element, and any swap of two different
# elements, changes S: the change is d * k with 0 < |d| < 2^32 and 0 < |k| < P2, and P1 * P2
# cannot divide it. Other changes go unseen with a probability of about 2^-62.
_P1 = 2_147_483_647  # 2^31 - 1
_P2 = 2_147_483_629  # the largest prime below it
_WORD = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int32}
_CHUNK = 1 << 22  # words per step: bounds each int64 temporary at 32 MiB


def _checksum(t: torch.Tensor) -> torch.Tensor:
    flat = t.detach().contiguous().reshape(-1)
    words = flat.view(_WORD[flat.element_size()])
    acc = [torch.zeros((), dtype=torch.int64, device=t.device) for _ in (_P1, _P2)]
    for start in range(0, words.numel(), _CHUNK):
        u = words[start:start + _CHUNK].to(torch.int64).add_(1 << 31)
        weight = torch.arange(start + 1, start + 1 + u.numel(), dtype=torch.int64, device=t.device)
        if start + u.numel() >= _P2:  # past P2 words (8 GiB of fp32): wrap the weights to stay < P2
            weight = (weight - 1).remainder_(_P2 - 1).add_(1)
        u.mul_(weight)
        for j, p in enumerate((_P1, _P2)):
            acc[j] = (acc[j] + u.remainder(p).sum()).remainder_(p)  # the sum is < 2^22 * p < 2^53
    return (acc[0] << 31) | acc[1]


def param_checksums(model: nn.Module) -> torch.Tensor:
    """One exact int64 checksum per parameter (``named_parameters`` order), computed where the
    parameters live; nothing is synchronised or copied to the host here."""
    sums = [_checksum(p) for p in model.parameters()]
    if not sums:
        return torch.zeros(0, dtype=torch.int64)
    return torch.stack([s.to(sums[0].device) for s in sums])


# --------------------------------------------------------------------------- divergence check
def verify_replicas(ctx: DistContext, model: nn.Module, step: int) -> None:
    """Raise JobError on every rank if any rank's parameters differ from rank 0's by even one bit.
    No-op on one process. Costs one all-gather of 8 bytes per parameter per rank, and a host
    sync (the gathered rows come back to the CPU): call it every ``comm.verify_every`` steps."""
    if ctx.backend is None:
        return
    rows = all_gather_rows(ctx, param_checksums(model))
    diff = rows != rows[0]
    if not bool(diff.any()):
        return
    ranks = [r for r in range(ctx.world_size) if bool(diff[r].any())]
    bad = diff.any(dim=0).nonzero().flatten().tolist()
    names = [name for name, _ in model.named_parameters()]
    who = f"rank {ranks[0]} differs" if len(ranks) == 1 else f"ranks {', '.join(map(str, ranks))} differ"
    raise JobError(
        f"replicas diverged at step {step}: {who} from rank 0 in {len(bad)} of {len(names)} "
        f"parameters, first {names[bad[0]]}; {DIVERGENCE_FIX}"
    )
