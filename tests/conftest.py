"""Test tiers: ``gpu`` tests run only where CUDA is visible (the lent device machine); CI has none."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter, on CPU tensors: that is how CI tests them.
# Triton reads the variable when @triton.jit decorates, i.e. when a kernel module is imported, so
# it is set here, before any test module imports ddtrain. Spawned ranks and subprocesses inherit it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
