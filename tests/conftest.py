"""Test tiers, by folder.

- quick (pure, in-process): ``unit``, ``kernels`` (Triton's CPU interpreter), ``docs``;
- ``slow`` (they start processes): ``cli``, ``packaging``, ``gloo`` (also ``gloo``), ``mpi``
  (also ``mpi``), ``compile`` (every Triton kernel compiled for Hopper and Ampere, no GPU needed),
  ``cluster`` (also ``cluster``: nodes made of network namespaces, root only, skipped otherwise);
- ``gpu``: run only where CUDA is visible (the device machine); CI has none.

``bash tests/run.sh -m "not slow"`` is the quick tier; ``bash tests/run.sh`` runs everything.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in its interpreter, on CPU tensors: that is how CI tests them.
# Triton reads the variable when @triton.jit decorates, i.e. when a kernel module is imported, so
# it is set here, before any test module imports ddtrain. Spawned ranks and subprocesses inherit it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

TESTS = Path(__file__).resolve().parent
FOLDER_MARKS = {
    "unit": (), "kernels": (), "docs": (),
    "cli": ("slow",), "packaging": ("slow",), "gloo": ("gloo", "slow"), "mpi": ("mpi", "slow"),
    "compile": ("slow",), "cluster": ("cluster", "slow"),
    "gpu": ("gpu",),
}


def folder_of(path: Path) -> str:
    return path.resolve().relative_to(TESTS).parts[0]


def pytest_collection_modifyitems(config, items):
    skip_gpu = None if torch.cuda.is_available() else pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        folder = folder_of(Path(item.fspath))
        if folder not in FOLDER_MARKS:
            raise pytest.UsageError(f"tests/{folder} is not a known tier; add it to FOLDER_MARKS in "
                                    "tests/conftest.py (and pyproject's markers if it needs a new one)")
        for mark in FOLDER_MARKS[folder]:
            item.add_marker(mark)
        if skip_gpu is not None and item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)
