"""A user's own module, loss and loop, written as for torch's DistributedDataParallel.

The module has what breaks naive data parallelism: a tied weight (the output head is the
embedding), a buffer that changes in forward, and a branch whose parameters get no gradient on
odd steps. Each rank trains on its slice of every global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM = 16, 8


class TiedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.hidden = nn.Linear(DIM, DIM)
        self.side = nn.Linear(DIM, DIM)  # used on even steps only
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("calls", torch.zeros((), dtype=torch.float64))

    def forward(self, x: torch.Tensor, use_side: bool) -> torch.Tensor:
        with torch.no_grad():
            self.calls += 1
        h = torch.tanh(self.hidden(self.embed(x)))
        if use_side:
            h = h + self.side(h)
        return self.head(h)


def own_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y) + 0.01 * logits.pow(2).mean()


def global_batch(step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(VOCAB, (size,), generator=g)
    return x, (3 * x + 1) % VOCAB


def train_loop(ctx, wrap: str, batch: int, steps: int, set_to_none: bool = True,
               events: list | None = None, shard: str = "none", clip: float = 0.0) -> dict:
    """The user's loop on this rank (``wrap``: ddtrain | ddp | none; ``shard`` for ddtrain);
    its parameters after ``steps`` steps, and the number of forward calls its buffer counted."""
    import ddtrain

    torch.manual_seed(0)
    model = TiedNet().to(ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # no momentum: a zero gradient moves nothing
    if wrap == "ddtrain":
        model = ddtrain.DataParallel(model, bucket_mb=512 / 2**20, first_bucket_mb=256 / 2**20, shard=shard,
                                     optimizer=opt if shard != "none" else None)
        if events is not None:
            model._reducer._on_event = lambda kind, idx: events.append((kind, idx))
    elif wrap == "ddp":
        model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    for step in range(steps):
        x, y = global_batch(step, batch * ctx.world_size)
        mine = slice(ctx.rank * batch, (ctx.rank + 1) * batch)
        loss = own_loss(model(x[mine], use_side=step % 2 == 0), y[mine])
        loss.backward()
        if clip and wrap == "ddtrain":
            model.clip_grad_norm_(clip)
        elif clip:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=set_to_none)
    bare = model.module if wrap != "none" else model
    return {"params": {k: v.detach().cpu().numpy() for k, v in bare.state_dict().items()},
            "state_dict_keys": sorted(model.state_dict())}
