"""A user's own package, written to disk as a user would have it: a model with no
``flops_per_sample``, a map-style data set made by a function, and a loss with a keyword. Tests
put its folder on PYTHONPATH and name its parts with ``_target_``."""

from __future__ import annotations

import textwrap
from pathlib import Path

NAME = "userplug"

NETS = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, features: int, width: int, classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.body(x))


def make_net(features: int, width: int, classes: int) -> nn.Module:
    return Net(features, width, classes)


class NotAModule:
    def __init__(self, **kwargs):
        pass


def not_a_module(**kwargs):
    return [1, 2, 3]
'''

DATA = '''
import torch
from torch.utils.data import Dataset


class Blobs(Dataset):
    """Points around one centre per class: learnable in a few steps."""

    def __init__(self, n: int, features: int, classes: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        centres = 3 * torch.randn(classes, features, generator=torch.Generator().manual_seed(1234))
        self.y = torch.randint(0, classes, (n,), generator=g)
        self.x = centres[self.y] + torch.randn(n, features, generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def make_train_set(n: int, features: int, classes: int) -> Dataset:
    return Blobs(n, features, classes, seed=0)


def make_val_set(n: int, features: int, classes: int) -> Dataset:
    return Blobs(n // 4, features, classes, seed=1)


def not_a_dataset(**kwargs):
    return 42
'''

LOSSES = '''
import torch.nn.functional as F


def smoothed_ce(output, target, smoothing: float = 0.0):
    return F.cross_entropy(output.float(), target, label_smoothing=smoothing)
'''

BROKEN = '''
raise RuntimeError("this module is broken on purpose")
'''


def write_package(root: Path) -> Path:
    """The package under ``root``; returns ``root`` (the folder PYTHONPATH must hold)."""
    pkg = root / NAME
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for name, body in (("nets", NETS), ("data", DATA), ("losses", LOSSES), ("broken", BROKEN)):
        (pkg / f"{name}.py").write_text(textwrap.dedent(body))
    return root


FEATURES, WIDTH, CLASSES = 16, 32, 4

# ``ddtrain`` overrides that train the package's model on its data set with its loss.
OVERRIDES = [
    "model=custom", f"model._target_={NAME}.nets.Net", f"+model.features={FEATURES}", f"+model.width={WIDTH}",
    f"+model.classes={CLASSES}",
    "data=custom", f"data._target_={NAME}.data.make_train_set", f"data.val_target={NAME}.data.make_val_set",
    "+data.n=512", f"+data.features={FEATURES}", f"+data.classes={CLASSES}", "data.batch_size=8",
    f"loss._target_={NAME}.losses.smoothed_ce", "+loss.smoothing=0.05",
]
