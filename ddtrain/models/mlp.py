"""A multilayer perceptron on flattened images: the smallest image workload."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ddtrain.config import check_positives
from ddtrain.data.spec import DataSpec
from ddtrain.registry import ModelEntry


@dataclass(frozen=True)
class MLPConfig:
    name: str = "mlp"
    hidden: int = 256
    layers: int = 3  # hidden layers


def validate(m: MLPConfig) -> None:
    check_positives("model", m, "hidden", "layers")


class MLP(nn.Module):
    """flatten -> ``layers`` x (Linear(width ``hidden``) + ReLU) -> Linear to the classes."""

    def __init__(self, cfg: MLPConfig, spec: DataSpec) -> None:
        super().__init__()
        widths = [spec.channels * spec.image_size**2] + [cfg.hidden] * cfg.layers
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], spec.num_classes))
        self.net = nn.Sequential(*layers)
        self._widths = widths + [spec.num_classes]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))

    def flops_per_sample(self) -> int:
        # A Linear(in, out) costs 2*in*out FLOPs per sample forward (one multiply-add per weight),
        # and 2*in*out each for the weight gradient and the input gradient backward: 6*in*out.
        # The first layer reads the data, which needs no gradient, so autograd skips its input
        # gradient: 4*in*out. That layer dominates on images (3072x256 vs 256x256 for CIFAR), so
        # the blanket 6*in*out rule would overstate the work by ~40%.
        # Not counted: biases, ReLU.
        pairs = list(zip(self._widths[:-1], self._widths[1:], strict=True))
        first_in, first_out = pairs[0]
        return 4 * first_in * first_out + sum(6 * i * o for i, o in pairs[1:])


ENTRY = ModelEntry(name="mlp", schema=MLPConfig, input_kind="image", build=MLP, validate=validate)
