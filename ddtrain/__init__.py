"""ddtrain: data-parallel training with an overlapped, bucketed gradient reducer.

From Python::

    import ddtrain
    ctx = ddtrain.init()                       # the launcher's job: rank, world size, device
    model = ddtrain.DataParallel(model.to(ctx.device))
    loader = ddtrain.shard(dataset, batch_size=32)  # this rank's share of each global batch
    for epoch in range(epochs):
        for x, y in loader:
            ...                                # your step, as with DistributedDataParallel
    ddtrain.shutdown()

The names load on first use, so ``import ddtrain`` alone (the command-line tools) costs nothing.
"""

__version__ = "0.1.0"
__all__ = ["DataParallel", "__version__", "init", "shard", "shutdown"]
_API = ("DataParallel", "init", "shard", "shutdown")


def __getattr__(name: str):
    if name in _API:
        from ddtrain import api

        return getattr(api, name)
    raise AttributeError(f"module 'ddtrain' has no attribute {name!r}")
