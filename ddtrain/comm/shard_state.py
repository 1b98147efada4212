"""A sharded optimizer's state in the unsharded format, and back.

The unsharded format is torch's ``optimizer.state_dict()`` for the model's parameters: state
keyed by the parameter's index (numbered group by group, in order), each per-element entry
shaped as the parameter. A checkpoint written with sharding is therefore the same file a run
without it writes, and loads at any world size and shard mode.

Per-element entries travel one bucket at a time: each rank lays its pieces' values into its
shard of the bucket, one all-gather puts the bucket together, and each parameter's slot is cut
out. Scalar entries (the step count) and the key names travel as small Python objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from ddtrain.comm.sharded import ShardedReducer

from ddtrain.comm.sharded import SCALAR_STATE


def _per_element(key: str, value, shape: torch.Size) -> bool:
    return key not in SCALAR_STATE and torch.is_tensor(value) and value.shape == shape


def gather_state(red: ShardedReducer, opt: torch.optim.Optimizer) -> dict | None:
    """Every rank calls this; rank 0 returns the unsharded state dict, the others None."""
    piece_state = [opt.state.get(t, {}) for t in red.piece_tensors]
    keys: dict[str, torch.dtype] = {}
    scalars: dict[int, dict] = {}
    for pc, t, st in zip(red.pieces, red.piece_tensors, piece_state):
        if not st:
            continue
        entry = scalars.setdefault(pc.param, {})  # the parameters with any state, and their scalars
        for k, v in st.items():
            if _per_element(k, v, t.shape):
                keys.setdefault(k, v.dtype)
            else:
                entry[k] = v.cpu() if torch.is_tensor(v) else v
    everyone: list = [None] * red.world_size
    dist.all_gather_object(everyone, (keys, scalars), group=red.group)
    all_keys: dict[str, torch.dtype] = {}
    all_scalars: dict[int, dict] = {}
    for k_, s_ in everyone:
        for k, dt in k_.items():
            all_keys.setdefault(k, dt)
        for i, st in s_.items():
            all_scalars.setdefault(i, st)

    full: dict[int, dict] = {i: dict(st) for i, st in all_scalars.items()}
    device = red.flat_params[0].device
    for key in sorted(all_keys):
        for b in range(len(red.plan)):
            local = torch.zeros(red.layout.size(b), dtype=all_keys[key], device=device)
            for pc, st in zip(red.pieces, piece_state):
                if pc.bucket == b and key in st:
                    local[pc.offset:pc.offset + pc.numel] = st[key]
            whole = torch.empty(red.layout.padded[b], dtype=local.dtype, device=device)
            dist.all_gather_single(whole, local, group=red.group)
            if red.layout.rank != 0:
                continue
            for i in red.plan.members[b]:
                if i in full:  # a parameter the optimizer has stepped
                    s = red.plan.slots[i]
                    full[i][key] = whole[s.offset:s.offset + s.numel].view_as(red.params[i]).clone()
    if red.layout.rank != 0:
        return None
    numbering = {i: n for n, i in enumerate(i for members in red._groups for i in members)}
    groups = []
    for group, members in zip(opt.param_groups, red._groups):
        groups.append({**{k: v for k, v in group.items() if k != "params"},
                       "params": [numbering[i] for i in members]})
    return {"state": {numbering[i]: st for i, st in sorted(full.items()) if i in numbering},
            "param_groups": groups}


def scatter_state(red: ShardedReducer, opt: torch.optim.Optimizer, state: dict) -> None:
    """Load the unsharded ``state`` into this rank's pieces (any world size wrote it)."""
    groups = state["param_groups"]
    if len(groups) != len(opt.param_groups) or any(
            len(g["params"]) != len(m) for g, m in zip(groups, red._groups)):
        raise ValueError("the saved optimizer state has other parameter groups than this optimizer "
                         f"({[len(g['params']) for g in groups]} against {[len(m) for m in red._groups]} "
                         "parameters per group)")
    for saved, group in zip(groups, opt.param_groups):
        group.update({k: v for k, v in saved.items() if k != "params"})
    numbering = {i: n for n, i in enumerate(i for members in red._groups for i in members)}
    opt.state.clear()
    for pc, t in zip(red.pieces, red.piece_tensors):
        saved = state["state"].get(numbering.get(pc.param, -1))
        if saved is None:
            continue
        shape = red.params[pc.param].shape
        st = {}
        for k, v in saved.items():
            if _per_element(k, v, shape):
                st[k] = v.reshape(-1)[pc.start:pc.start + pc.numel].to(t.device, t.dtype).clone()
            else:
                st[k] = v.clone().to(t.device) if torch.is_tensor(v) else v
        opt.state[t] = st
