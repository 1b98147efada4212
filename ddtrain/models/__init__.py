"""The model zoo: reference workloads for ddtrain, each reporting its training FLOPs per sample.

``build_model(cfg.model, spec)`` picks the model by ``cfg.name`` and checks that the data set
hands it the kind of input it reads (images, token ids or spectral frames) before anything is
allocated.
"""

from __future__ import annotations

from torch import nn

from ddtrain.config import ModelConfig
from ddtrain.data.spec import DataSpec
from ddtrain.models.convnet import ConvNet
from ddtrain.models.gpt import GPT
from ddtrain.models.mlp import MLP
from ddtrain.models.prnn import PRNN
from ddtrain.models.resnet import ResNet
from ddtrain.models.rnn import GRULM

# model name -> the DataSpec.kind it reads
INPUT_KIND: dict[str, str] = {
    "mlp": "image",
    "convnet": "image",
    "resnet": "image",
    "rnn": "tokens",
    "gpt": "tokens",
    "prnn": "frames",
}

_BUILDERS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "convnet": ConvNet,
    "resnet": ResNet,
    "rnn": GRULM,
    "gpt": GPT,
    "prnn": PRNN,
}

# wording and the data sets that supply each kind, for the mismatch message
_NOUN = {"image": "image", "tokens": "token", "frames": "frame"}
_PLURAL = {"image": "images", "tokens": "tokens", "frames": "frames"}
_DATA_FOR = {
    "image": "data=digits or data=synthetic",
    "tokens": "data=chars or data=synthetic",
    "frames": "data=speech",
}


def build_model(cfg: ModelConfig, spec: DataSpec) -> nn.Module:
    """Build the model ``cfg.name`` for data shaped like ``spec``; raise ValueError on a mismatch."""
    if cfg.name not in _BUILDERS:
        raise ValueError(f"model={cfg.name!r} is unknown; choose one of: {', '.join(_BUILDERS)}")
    needs = INPUT_KIND[cfg.name]
    if spec.kind != needs:
        gives = _PLURAL.get(spec.kind, spec.kind)
        raise ValueError(
            f"model={cfg.name} needs {_NOUN[needs]} data but data gives {gives}; use {_DATA_FOR[needs]}"
        )
    return _BUILDERS[cfg.name](cfg, spec)


__all__ = ["INPUT_KIND", "build_model"]
