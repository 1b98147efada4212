"""A GRU language model: Embedding -> nn.GRU -> Linear over the vocabulary at every step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ddtrain.config import check_positives
from ddtrain.data.spec import DataSpec
from ddtrain.registry import ModelEntry


@dataclass(frozen=True)
class RNNConfig:
    name: str = "rnn"
    embed: int = 64
    hidden: int = 256
    layers: int = 2


def validate(m: RNNConfig) -> None:
    check_positives("model", m, "embed", "hidden", "layers")


class GRULM(nn.Module):
    def __init__(self, cfg: RNNConfig, spec: DataSpec) -> None:
        super().__init__()
        self.embed = nn.Embedding(spec.vocab_size, cfg.embed)
        # Kept as the attribute ``rnn``: a persistent-kernel GRU is meant to replace it in place.
        self.rnn = nn.GRU(cfg.embed, cfg.hidden, num_layers=cfg.layers, batch_first=True)
        self.head = nn.Linear(cfg.hidden, spec.vocab_size)
        self.seq_len = spec.seq_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.rnn(self.embed(x))  # [B, T, H]; h0 = 0 on every call
        return self.head(hidden)

    def flops_per_sample(self) -> int:
        # Per time step, a GRU layer with input size I and hidden size H computes three gates
        # (reset, update, candidate), each from W_i x (I*H multiply-adds) and W_h h (H*H):
        # 3 * (2*I*H + 2*H*H) FLOPs forward (PyTorch nn.GRU docs give the gate equations).
        # The head adds 2*H*V per step. Training = 3x forward (input and weight gradients), over
        # T = seq_len steps.
        # Not counted: the embedding lookup and its scatter-add gradient, gate nonlinearities,
        # elementwise products, biases. Slight overcount: h0 = 0 needs no gradient, so autograd
        # skips one H*H input-gradient matmul per gate per layer per sequence (< 1/(3T) of the
        # recurrent term).
        gru = self.rnn
        per_step = 0
        for layer in range(gru.num_layers):
            fan_in = gru.input_size if layer == 0 else gru.hidden_size
            per_step += 3 * (2 * fan_in * gru.hidden_size + 2 * gru.hidden_size**2)
        per_step += 2 * self.head.in_features * self.head.out_features
        return 3 * self.seq_len * per_step


ENTRY = ModelEntry(name="rnn", schema=RNNConfig, input_kind="tokens", build=GRULM, validate=validate)
