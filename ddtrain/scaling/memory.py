"""Training-state bytes per worker under each shard mode, and the largest model that fits.

Counted as ``ddtrain/metrics/memory.py`` counts a run's tensors: parameters, gradients,
optimizer state, communication buffers. Activations are not training state and are not
counted: the largest model here is an upper bound that leaves them no room.

Per parameter, with p bytes per parameter, c per communicated element, s of optimizer state
(AdamW 8, SGD with momentum 4), at N workers:

- none: p + c (the buckets, which the gradients are views of when c = p; else + p) + s
- optimizer: p + c + s/N (+ p/N for the cast gradient shard when c != p)
- gradients: p + p/N + s/N (+ c/N for the cast's source when c != p), plus two bucket buffers
  that every bucket is filled through (a fixed size, not per parameter); on Gloo from 3 ranks
  on, beside each, an inbox for the third and later ranks' parts of this rank's shard ((N-2)/N
  of a bucket)

Pure: numbers in, numbers out.
"""

from __future__ import annotations

from dataclasses import dataclass

POOL = 2  # bucket buffers the gradients mode fills its buckets through (comm/sharded.py)
COMM_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def optimizer_state_bytes(name: str, momentum: float = 0.0) -> int:
    """Bytes of optimizer state per fp32 parameter."""
    if name == "adamw":
        return 8
    return 4 if momentum else 0


@dataclass(frozen=True)
class StateModel:
    param_bytes: int = 4
    comm_bytes: int = 4
    optimizer_bytes: int = 8
    bucket_bytes: float = 25 * 2**20
    inboxes: bool = False  # the gradients mode's shard exchange (Gloo) keeps an inbox per buffer

    def per_param(self, shard: str, n: int) -> float:
        p, c, s = self.param_bytes, self.comm_bytes, self.optimizer_bytes
        n = n if shard != "none" and n > 1 else 1
        cast = c != p
        if shard == "none":
            return p + c + (p if cast else 0) + s
        if shard == "optimizer":
            return p + c + s / n + (p / n if cast else 0)
        return p + p / n + s / n + (c / n if cast else 0)

    def fixed(self, shard: str, n: int, params: int | None = None) -> float:
        """Bytes that do not grow with the parameters: the gradients mode's bucket buffers and
        their inboxes (the buffers never more than the whole model's buckets; ``params`` None:
        a model larger than the buffers)."""
        if shard != "gradients" or n <= 1:
            return 0.0
        buffers = POOL * self.bucket_bytes
        if params is not None:
            buffers = min(buffers, params * self.comm_bytes)
        return buffers * (1 + (n - 2) / n if self.inboxes else 1)

    def state_bytes(self, shard: str, n: int, params: int) -> float:
        return self.per_param(shard, n) * params + self.fixed(shard, n, params)

    def largest_model(self, memory_bytes: float, shard: str, n: int) -> int:
        """Parameters whose training state fits in ``memory_bytes`` per worker."""
        return max(0, int((memory_bytes - self.fixed(shard, n)) / self.per_param(shard, n)))
