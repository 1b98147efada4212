"""ResNet-18/34/50 written in-tree (He et al., "Deep Residual Learning for Image Recognition", 2016).

``width=64`` gives the standard networks. The stride of a Bottleneck sits on its 3x3 conv (the
"v1.5" placement torchvision uses), which is what published ResNet-50 FLOP counts assume.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddtrain.config import ConfigError, check_choice, check_positive
from ddtrain.data.spec import DataSpec
from ddtrain.models.convnet import (
    BasicBlock,
    ResidualNet,
    cifar_stem,
    conv_flops,
    conv_out,
    norm_layer,
    shortcut,
)
from ddtrain.registry import ModelEntry


@dataclass(frozen=True)
class ResNetConfig:
    name: str = "resnet"
    depth: int = 18  # 18 | 34 | 50
    width: int = 64
    norm: str = "group"  # group | batch
    stem: str = "auto"  # auto | imagenet | cifar (auto: cifar for images below 64 px)


def validate(m: ResNetConfig) -> None:
    if m.depth not in (18, 34, 50):
        raise ConfigError(f"model.depth={m.depth} is not allowed; choose one of: 18, 34, 50")
    check_positive("model.width", m.width)
    check_choice("model.norm", m.norm, ["group", "batch"])
    check_choice("model.stem", m.stem, ["auto", "imagenet", "cifar"])


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand by 4, with a residual connection."""

    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, norm: str, in_size: int) -> None:
        super().__init__()
        c_out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.norm1 = norm_layer(norm, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.norm2 = norm_layer(norm, planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.norm3 = norm_layer(norm, c_out)
        self.out_size = conv_out(in_size, 3, stride, 1)
        self.forward_flops = (
            conv_flops(c_in, planes, 1, in_size)
            + conv_flops(planes, planes, 3, self.out_size)
            + conv_flops(planes, c_out, 1, self.out_size)
        )
        self.shortcut, flops = shortcut(c_in, c_out, stride, norm, self.out_size)
        self.forward_flops += flops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = F.relu(self.norm2(self.conv2(out)))
        out = self.norm3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


# depth -> (block, blocks per stage), Table 1 of He et al.
LAYOUTS: dict[int, tuple[type[nn.Module], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class ResNet(ResidualNet):
    def __init__(self, cfg: ResNetConfig, spec: DataSpec) -> None:
        super().__init__()
        if cfg.depth not in LAYOUTS:
            raise ValueError(f"model.depth={cfg.depth} is not allowed; choose one of: 18, 34, 50")
        block, counts = LAYOUTS[cfg.depth]
        stem_kind = cfg.stem
        if stem_kind == "auto":
            # The ImageNet stem divides the side by 4 before the first block; on 32 px images
            # that leaves 1x1 maps in the last stage, so small images get the CIFAR stem
            # (He et al. section 4.2 use a 3x3 stem for CIFAR).
            stem_kind = "cifar" if spec.image_size < 64 else "imagenet"
        size = spec.image_size
        if stem_kind == "imagenet":
            size = conv_out(size, 7, 2, 3)
            stem_flops = conv_flops(spec.channels, cfg.width, 7, size)
            stem = nn.Sequential(
                nn.Conv2d(spec.channels, cfg.width, 7, 2, 3, bias=False),
                norm_layer(cfg.norm, cfg.width),
                nn.ReLU(),
                nn.MaxPool2d(3, 2, 1),
            )
            size = conv_out(size, 3, 2, 1)
        elif stem_kind == "cifar":
            stem_flops = conv_flops(spec.channels, cfg.width, 3, size)
            stem = cifar_stem(spec.channels, cfg.width, cfg.norm)
        else:
            raise ValueError(f"model.stem={cfg.stem!r} is not allowed; choose one of: auto, imagenet, cifar")
        self.stem_kind = stem_kind
        # Same FLOP accounting as ConvNet (ResidualNet.flops_per_sample). Sanity check (tested):
        # at width 64 and 224 px the forward work is 1.81 / 3.66 / 4.09 G multiply-adds for
        # depth 18 / 34 / 50, the figures torchvision's model table lists as "GFLOPS" (they are
        # multiply-adds), so one training sample costs ~6x those in FLOPs.
        self._build(stem, stem_flops, size, block, counts, cfg.width, cfg.norm, spec.num_classes)


ENTRY = ModelEntry(name="resnet", schema=ResNetConfig, input_kind="image", build=ResNet, validate=validate)
