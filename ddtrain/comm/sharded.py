"""Sharded data parallel on ddtrain's reducer: ZeRO stage 1 (``optimizer``) and 2 (``gradients``).

The parameters are re-homed into one flat buffer per bucket (the reducer's bucket plan, padded to
a multiple of the world size), so that every bucket splits into N equal contiguous shards and
each parameter is a view of its slot. Rank r's optimizer steps only the parts of parameters
inside its shards (``shards.Piece``), as views of the flat buffers, so its update writes the
model's parameters in place; then every bucket is all-gathered, and every rank holds the same
parameters again.

- ``optimizer``: gradients are all-reduced as without sharding (the full averaged bucket stays
  on every rank); the optimizer state is 1/N.
- ``gradients``: each bucket is reduce-scattered the moment it is full, so a rank keeps only its
  shard of the averaged gradient. On Gloo, whose reduce-scatter collectives are slower than its
  all-reduce, each rank sends every other rank that rank's shard of its bucket and sums what it
  receives for its own (``ShardExchange``): (N-1)/N of a bucket out of each rank, as a ring
  reduce-scatter sends, half an all-reduce's bytes. Buckets are filled into a small pool of
  buffers (``pool``, bucket b uses buffer b mod pool), so the full gradient never exists at
  once: a bucket waits for the reduce-scatter of the one that used its buffer before it.

In both, a parameter's own ``.grad`` is dropped as soon as it is copied into its bucket, and
the all-gathers run while the next forward starts: a module's forward pre-hook waits only for
the buckets holding its own parameters, and the buckets are gathered in the order the forward
needs them (the first layers' bucket first). A parameter must therefore be read in the forward
of the module that owns it or of one above it, as FSDP asks too; ``overlap_gather=False``
gathers everything right after the step instead.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn

from ddtrain.comm.reducer import GradReducer
from ddtrain.comm.shards import ShardLayout, pieces, shard_layout

log = logging.getLogger(__name__)

# Optimizers whose update of an element reads only that element's parameter, gradient and
# state (and scalars): stepping a shard is then the same arithmetic as stepping the whole.
ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.Adamax,
               torch.optim.NAdam, torch.optim.RAdam, torch.optim.RMSprop, torch.optim.Adagrad)
# The one state entry of those optimizers that is a scalar, not a tensor shaped as the parameter.
SCALAR_STATE = ("step",)


# Point-to-point tags of the shard exchange: far above the sequence numbers Gloo's collectives
# take, so an exchange never matches a collective's message.
EXCHANGE_TAG = 1 << 30


class ShardExchange:
    """One bucket's reduce-scatter by point-to-point messages: this rank sends each peer that
    peer's shard of ``bucket`` and receives each peer's part of its own shard, the first into
    ``out`` itself and the others into ``inbox`` (one row each; None at 2 ranks); ``wait`` adds
    its own part and the rest to ``out``. Every rank posts all its sends and receives at once,
    so none waits on another's order."""

    def __init__(self, bucket: torch.Tensor, out: torch.Tensor, inbox: torch.Tensor | None, rank: int,
                 ranks: list[int], tag: int, group=None):
        size = out.numel()
        self._own, self._out, self._rows, self._works = bucket[rank * size:(rank + 1) * size], out, [], []
        peers = [j for j in range(len(ranks)) if j != rank]
        for i, j in enumerate(peers):
            into = out if i == 0 else inbox[i - 1][:size]
            if i > 0:
                self._rows.append(into)
            theirs = bucket[j * size:(j + 1) * size]
            self._works.append(dist.isend(theirs, dst=ranks[j], group=group, tag=tag))
            self._works.append(dist.irecv(into, src=ranks[j], group=group, tag=tag))
        if not peers:
            out.copy_(self._own)

    def wait(self) -> None:
        for work in self._works:
            work.wait()
        if self._works:
            self._out.add_(self._own)
        for row in self._rows:
            self._out.add_(row)


def broadcast_shards(flat: torch.Tensor, size: int, ranks: list[int], group=None) -> list:
    """Gather ``flat`` (len(ranks) shards of ``size`` elements, the i-th held by ``ranks[i]``) on
    every rank by one asynchronous broadcast per shard: on Gloo, faster than its all-gather
    (BENCHMARKS.md). Returns the works to wait for."""
    return [dist.broadcast(flat[i * size:(i + 1) * size], src=src, group=group, async_op=True)
            for i, src in enumerate(ranks)]


def check_elementwise(opt: torch.optim.Optimizer, shard: str) -> None:
    """ValueError, naming the optimizer, unless its update is elementwise."""
    if type(opt) not in ELEMENTWISE:
        names = ", ".join(c.__name__ for c in ELEMENTWISE)
        raise ValueError(f"comm.shard={shard} steps each rank's shard of the parameters alone, which needs "
                         f"an optimizer whose update is elementwise ({names}); {type(opt).__name__} is not "
                         "one of them; fix: comm.shard=none")


class ShardedReducer(GradReducer):
    def __init__(self, module: nn.Module, *, shard: str, world_size: int, bucket_mb: float,
                 first_bucket_mb: float, comm_dtype: str = "fp32", pool: int = 2,
                 overlap_gather: bool = True, group=None, on_event=None):
        if shard not in ("optimizer", "gradients"):
            raise ValueError(f"shard={shard!r}: choose optimizer or gradients")
        dtypes = {p.dtype for p in module.parameters() if p.requires_grad}
        if len(dtypes) > 1:
            raise ValueError(f"sharding needs one parameter dtype, the model has {sorted(map(str, dtypes))}; "
                             "fix: cast the model to one dtype (mixed precision comes from autocast)")
        self.shard = shard
        self.pool = max(1, pool)
        self._gloo = dist.get_backend(group) == "gloo"
        # Broadcasts name their source by global rank.
        self._ranks = [dist.get_global_rank(group, r) if group is not None else r
                       for r in range(world_size)]
        self.overlap_gather = overlap_gather
        self.layout: ShardLayout  # set by _bucket_buffers, which the base class calls
        # Triton packing fills a bucket from p.grad at launch time; sharding drops p.grad at the
        # hook, so each hook copies its own slot.
        super().__init__(module, world_size=world_size, bucket_mb=bucket_mb, first_bucket_mb=first_bucket_mb,
                         comm_dtype=comm_dtype, pack="torch", group=group, on_event=on_event)
        self._rehome(self.params[0].device)
        self.pieces = pieces(self.plan, self.layout)
        self.piece_names = [self.names[pc.param] for pc in self.pieces]
        self.piece_tensors = []
        for pc in self.pieces:
            lo, _ = self.layout.own(pc.bucket)
            self.piece_tensors.append(self.flat_params[pc.bucket][lo + pc.offset:lo + pc.offset + pc.numel])
        self._shard_grads()
        self._gathers: list = [None] * len(self.plan)
        self._prehooks = self._forward_prehooks(module) if overlap_gather else []
        self.optimizer: torch.optim.Optimizer | None = None

    # ------------------------------------------------------------------ buffers
    def _bucket_buffers(self, device: torch.device) -> list[torch.Tensor]:
        self.layout = shard_layout(self.plan, self.world_size, dist.get_rank(self.group))
        padded = self.layout.padded
        dt = self.comm_dtype
        self.inboxes: list[torch.Tensor] = []
        if self.shard == "optimizer":  # zeros: the padding is never written and sums to zero
            return [torch.zeros(n, dtype=dt, device=device) for n in padded]
        k = min(self.pool, len(padded))
        self.pool_buffers = [torch.zeros(max(padded[b::k]), dtype=dt, device=device) for b in range(k)]
        # Gloo's shard exchange receives the parts of this rank's shard from the third rank on
        # beside the buffer (the first peer's lands in the shard's own output).
        world = self.world_size
        if self._gloo and world > 2:
            self.inboxes = [torch.empty(world - 2, max(padded[b::k]) // world, dtype=dt, device=device)
                            for b in range(k)]
        return [self.pool_buffers[b % k][:n] for b, n in enumerate(padded)]

    def _rehome(self, device: torch.device) -> None:
        """Move every parameter into its slot of a flat, padded buffer per bucket."""
        dtype = self.params[0].dtype
        self.flat_params = [torch.zeros(n, dtype=dtype, device=device) for n in self.layout.padded]
        with torch.no_grad():
            for idx, p in enumerate(self.params):
                s = self.plan.slots[idx]
                view = self.flat_params[s.bucket][s.offset:s.offset + s.numel]
                view.copy_(p.detach().reshape(-1))
                p.data = view.view_as(p)

    def _shard_grads(self) -> None:
        """Where each bucket's averaged gradient shard lands, in the parameters' dtype, and the
        copies (a cast from the comm dtype) that put it there after the collectives."""
        dtype = self.params[0].dtype
        same = self.comm_dtype == dtype
        self.grad_shards, self._rs_out, self._copies = [], [], []
        for b in range(len(self.plan)):
            lo, hi = self.layout.own(b)
            if self.shard == "optimizer":
                src = self.buffers[b][lo:hi]
                dst = src if same else torch.empty(hi - lo, dtype=dtype, device=src.device)
            else:
                dst = torch.empty(hi - lo, dtype=dtype, device=self.buffers[b].device)
                src = dst if same else torch.empty(hi - lo, dtype=self.comm_dtype, device=dst.device)
                self._rs_out.append(src)
            self.grad_shards.append(dst)
            if src is not dst:
                self._copies.append((dst, src))
        self._piece_grads = [self.grad_shards[pc.bucket][pc.offset:pc.offset + pc.numel]
                             for pc in self.pieces]

    # ------------------------------------------------------------------ backward
    def _reset(self) -> None:
        super()._reset()
        self._holder = [None] * self.pool  # the bucket each pool buffer is filled by now
        self._taken = [False] * len(self.plan)  # its reduced shard is out of the pool buffer
        self._deferred: list[list[int]] = [[] for _ in self.plan.members]

    def _fill(self, idx: int, grad: torch.Tensor | None) -> None:
        bucket = self.plan.slots[idx].bucket
        if self.shard == "gradients" and not self._holds(bucket):
            self._deferred[bucket].append(idx)  # p.grad is kept until the bucket's buffer is free
            return
        super()._fill(idx, grad)

    def _holds(self, bucket: int) -> bool:
        """Whether ``bucket`` may write its pool buffer now (taking it over if so). The buffer's
        previous user, bucket - pool, must have been launched; its reduce-scatter is waited for.
        Bucket b never takes the buffer before b - pool is launched, so a launch (in bucket
        order) always finds its buffer free: no bucket waits on a later one."""
        k = bucket % self.pool
        if self._holder[k] == bucket:
            return True
        if bucket >= self.pool and self._next <= bucket - self.pool:
            return False
        previous = self._holder[k]
        if previous is not None:
            self._take_shard(previous)
        self._holder[k] = bucket
        return True

    def _take_shard(self, bucket: int) -> None:
        """Wait for ``bucket``'s reduction; where it was an all-reduce (Gloo), copy this rank's
        shard out of the pool buffer before another bucket reuses it."""
        if self._taken[bucket]:
            return
        self._works[bucket].wait()
        self._taken[bucket] = True

    def _launch(self, bucket: int):
        if self.shard == "optimizer":
            return dist.all_reduce(self.buffers[bucket], group=self.group, async_op=True)
        if not self._holds(bucket):
            raise RuntimeError(f"bucket {bucket}'s buffer is still in use at its launch")
        for idx in self._deferred[bucket]:
            super()._fill(idx, self.params[idx].grad)
            self.params[idx].grad = None
        self._deferred[bucket] = []
        # The pool buffer may hold a larger bucket's tail from before; padding must be finite.
        self.buffers[bucket][self.plan.sizes[bucket]:].zero_()
        if self._gloo:  # Gloo's reduce-scatter collectives are the slower (BENCHMARKS.md)
            inbox = self.inboxes[bucket % self.pool] if self.inboxes else None
            return ShardExchange(self.buffers[bucket], self._rs_out[bucket], inbox, self.layout.rank,
                                 self._ranks, EXCHANGE_TAG + bucket, self.group)
        return dist.reduce_scatter_single(self._rs_out[bucket], self.buffers[bucket], group=self.group,
                                          async_op=True)

    def wait(self) -> None:
        """Finish this step's communication and leave each piece's averaged gradient in its
        ``.grad`` (the optimizer's parameters); the model's own parameters hold no gradient."""
        if not self._sync:
            return
        self.gathered()
        if self._next < len(self.plan):
            self._complete_unfinished()
        for bucket, work in enumerate(self._works):
            if self.shard == "gradients":
                self._take_shard(bucket)
            else:
                work.wait()
        for dst, src in self._copies:
            dst.copy_(src)
        for t, g in zip(self.piece_tensors, self._piece_grads):
            t.grad = g
        self._reset()

    # ------------------------------------------------------------------ after the update
    def start_gather(self) -> None:
        """All-gather every bucket's updated shards, the first layers' bucket first. On Gloo
        each rank broadcasts its shard instead (N broadcasts per bucket): Gloo's all-gather is
        the slower there (BENCHMARKS.md)."""
        for b in reversed(range(len(self.plan))):
            flat, size = self.flat_params[b], self.layout.size(b)
            if self._gloo:
                self._gathers[b] = broadcast_shards(flat, size, self._ranks, self.group)
            else:
                lo, hi = self.layout.own(b)
                self._gathers[b] = [dist.all_gather_single(flat, flat[lo:hi], group=self.group,
                                                           async_op=True)]
        if not self.overlap_gather:
            self.gathered()

    def gathered(self, buckets=None) -> None:
        """Wait until ``buckets`` (all: None) hold every rank's updated parameters."""
        for b in range(len(self.plan)) if buckets is None else buckets:
            works = self._gathers[b]
            if works is not None:
                for work in works:
                    work.wait()
                self._gathers[b] = None

    def _forward_prehooks(self, module: nn.Module) -> list:
        index = {id(p): i for i, p in enumerate(self.params)}
        hooks = []
        for m in module.modules():
            buckets = sorted({self.plan.slots[index[id(p)]].bucket for p in m.parameters(recurse=False)
                              if id(p) in index}, reverse=True)
            if buckets:
                hooks.append(m.register_forward_pre_hook(
                    lambda _m, _args, b=tuple(buckets): self.gathered(b)))
        return hooks

    def remove_hooks(self) -> None:
        super().remove_hooks()
        for h in self._prehooks:
            h.remove()
        self._prehooks = []

    # ------------------------------------------------------------------ the optimizer
    def shard_optimizer(self, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """Point ``opt`` (built on the model's parameters, not yet stepped) at this rank's pieces,
        group by group, and gather the parameters after each of its steps. Returns ``opt``."""
        check_elementwise(opt, self.shard)
        if opt.state:
            raise ValueError("the optimizer has state already; hand it to sharding before its first step")
        index = {id(p): i for i, p in enumerate(self.params)}
        by_param: dict[int, list[int]] = {}
        for j, pc in enumerate(self.pieces):
            by_param.setdefault(pc.param, []).append(j)
        self._groups = []  # per group: the tensor indices it held, in order (the unsharded numbering)
        for group in opt.param_groups:
            members = []
            for p in group["params"]:
                if id(p) not in index:
                    raise ValueError("the optimizer holds a tensor that is not a trainable parameter of the "
                                     "wrapped model; sharding can step only the model's parameters")
                members.append(index[id(p)])
            self._groups.append(members)
            group["params"] = [self.piece_tensors[j] for i in members for j in by_param.get(i, [])]
        opt.register_step_post_hook(lambda *_: self.start_gather())
        self.optimizer = opt
        return opt

    def optimizer_state_dict(self, opt: torch.optim.Optimizer) -> dict | None:
        """The unsharded ``opt.state_dict()`` (the format a run without sharding writes), put
        together from every rank's shards. A collective: every rank calls it; rank 0 gets it."""
        from ddtrain.comm.shard_state import gather_state

        return gather_state(self, opt)

    def load_optimizer_state_dict(self, opt: torch.optim.Optimizer, state: dict) -> None:
        """Load an unsharded optimizer state dict: each piece takes its part."""
        from ddtrain.comm.shard_state import scatter_state

        scatter_state(self, opt, state)

    def describe(self) -> str:
        n = sum(pc.numel for pc in self.pieces)
        total = sum(p.numel() for p in self.params)
        how = ("gradients all-reduced, optimizer state sharded" if self.shard == "optimizer" else
               f"gradients reduce-scattered through {len(self.pool_buffers)} pooled bucket buffer(s), "
               "optimizer state sharded")
        when = "during the next forward" if self.overlap_gather else "after the step"
        return (f"{super().describe()}; shard={self.shard} ({how}): this rank steps {n:,} of {total:,} "
                f"parameters, gathered {when}")
