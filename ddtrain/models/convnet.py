"""A small ResNet-style convnet, plus the norm/conv/FLOP pieces that ``resnet`` reuses.

Normalisation is GroupNorm unless ``norm="batch"``. GroupNorm normalises each sample on its own,
so N ranks with batch b compute exactly the gradients of one rank with batch N*b. BatchNorm's
statistics couple the samples of a batch, so a data-parallel run would differ from the
single-process run it is meant to reproduce (unless the statistics are synchronised).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddtrain.config import check_choice, check_positives
from ddtrain.data.spec import DataSpec
from ddtrain.registry import ModelEntry


@dataclass(frozen=True)
class ConvNetConfig:
    name: str = "convnet"
    width: int = 32  # channels of the first stage; doubled at each later stage
    stages: int = 3
    blocks_per_stage: int = 1
    norm: str = "group"  # group | batch


def validate(m: ConvNetConfig) -> None:
    check_positives("model", m, "width", "stages", "blocks_per_stage")
    check_choice("model.norm", m.norm, ["group", "batch"])


def group_count(channels: int) -> int:
    """The largest divisor of ``channels`` that is at most 32.

    32 groups is the default of Wu & He, "Group Normalization" (ECCV 2018); taking a divisor keeps
    every width valid (a width below 32 gets one channel per group).
    """
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(group_count(channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"model.norm={kind!r} is not allowed; choose one of: group, batch")


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output side length of a conv or pool (floor mode), as in the nn.Conv2d docs."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_flops(c_in: int, c_out: int, kernel: int, out_size: int) -> int:
    """Forward FLOPs of one sample through a bias-free square conv.

    Every output element is a dot product of c_in*k*k terms: 2 * c_in * k^2 * c_out * H_out * W_out.
    """
    return 2 * c_in * kernel * kernel * c_out * out_size * out_size


def shortcut(c_in: int, c_out: int, stride: int, norm: str, out_size: int) -> tuple[nn.Module, int]:
    """A residual block's shortcut and its forward FLOPs: the identity when shapes match, else a
    1x1 conv with the block's stride and a norm ("option B" of He et al.)."""
    if stride == 1 and c_in == c_out:
        return nn.Identity(), 0
    proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm_layer(norm, c_out))
    return proj, conv_flops(c_in, c_out, 1, out_size)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (He et al., "Deep Residual Learning", 2016).

    The shortcut is the identity when shapes match, else a 1x1 conv with the block's stride.
    Convs have no bias: the norm that follows would cancel it.
    """

    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, norm: str, in_size: int) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.norm1 = norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, c_out, 3, 1, 1, bias=False)
        self.norm2 = norm_layer(norm, c_out)
        self.out_size = conv_out(in_size, 3, stride, 1)
        self.forward_flops = conv_flops(c_in, planes, 3, self.out_size) + conv_flops(
            planes, c_out, 3, self.out_size
        )
        self.shortcut, flops = shortcut(c_in, c_out, stride, norm, self.out_size)
        self.forward_flops += flops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def cifar_stem(channels: int, width: int, norm: str) -> nn.Module:
    """3x3 stride-1 conv + norm + ReLU: keeps small images' resolution (He et al. section 4.2)."""
    return nn.Sequential(nn.Conv2d(channels, width, 3, 1, 1, bias=False), norm_layer(norm, width), nn.ReLU())


class ResidualNet(nn.Module):
    """stem -> stages of residual blocks (width doubles and stride 2 from the second stage on)
    -> global average pool -> Linear head. ``convnet`` and ``resnet`` differ only in the stem,
    the block and the blocks per stage."""

    def _build(self, stem: nn.Module, stem_flops: int, size: int, block: type[nn.Module],
               counts: list[int] | tuple[int, ...], width: int, norm: str, num_classes: int) -> None:
        self.stem = stem
        self._stem_flops = stem_flops
        blocks = []
        c_in = width
        for stage, count in enumerate(counts):
            planes = width * 2**stage
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                b = block(c_in, planes, stride, norm, size)
                blocks.append(b)
                size, c_in = b.out_size, planes * block.expansion
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))

    def flops_per_sample(self) -> int:
        # Forward + backward = 3x forward for every conv and the head (backward computes both the
        # input and the weight gradient, each as costly as the forward), except the stem: its
        # input is the data, which needs no gradient, so it costs 2x (forward + weight gradient).
        # Head: 2*C*num_classes forward. Not counted: norms, ReLU, pooling, residual adds, biases.
        blocks = sum(b.forward_flops for b in self.blocks)
        head = 2 * self.head.in_features * self.head.out_features
        return 2 * self._stem_flops + 3 * (blocks + head)


class ConvNet(ResidualNet):
    """A small ResNet-style net: 3x3 stem and ``stages`` stages of ``blocks_per_stage`` BasicBlocks."""

    def __init__(self, cfg: ConvNetConfig, spec: DataSpec) -> None:
        super().__init__()
        self._build(
            cifar_stem(spec.channels, cfg.width, cfg.norm),
            conv_flops(spec.channels, cfg.width, 3, spec.image_size),
            spec.image_size, BasicBlock, [cfg.blocks_per_stage] * cfg.stages, cfg.width, cfg.norm,
            spec.num_classes,
        )


ENTRY = ModelEntry(name="convnet", schema=ConvNetConfig, input_kind="image", build=ConvNet, validate=validate)
