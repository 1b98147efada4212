"""``trainer.compile=true``: the model compiled with torch.compile, one region per block.

Compiling the whole model makes its backward one graph whose parameter gradients all appear when
that graph ends, so a data-parallel reducer would launch every bucket at once, after backward:
no overlap. torch's DDP avoids this with DDPOptimizer, which breaks the graph at bucket
boundaries. ddtrain breaks it at module boundaries instead: each block that owns parameters
(a child of the model, or of a Sequential, ModuleList or ModuleDict inside it) is compiled on
its own with ``nn.Module.compile`` (in place, so parameter names and checkpoints are unchanged),
and the glue between blocks stays eager. A block's gradients then exist as soon as its own
backward graph finishes, the reducer's hooks fire block by block, and buckets still launch while
later blocks run backward. Repeated blocks of one class share compiled code.

The persistent recurrent layers are left eager: they are already one fused kernel on a GPU.
"""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger("ddtrain")

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _stays_eager(module: nn.Module) -> bool:
    from ddtrain.kernels.persistent_rnn import _PersistentBase

    return isinstance(module, _PersistentBase)


def regions(model: nn.Module) -> list[nn.Module]:
    """The blocks ``compile_regions`` compiles, in model order."""
    out = []
    for child in model.children():
        if isinstance(child, _CONTAINERS):
            out += regions(child)
        elif _stays_eager(child):
            continue
        elif any(True for _ in child.parameters()):
            out.append(child)
    return out


def compile_regions(model: nn.Module) -> int:
    """Compile each block of ``model`` in place; returns how many were compiled."""
    blocks = regions(model)
    for block in blocks:
        block.compile()
    return len(blocks)
