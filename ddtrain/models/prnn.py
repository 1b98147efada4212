"""A DeepSpeech-like acoustic model whose recurrent layers are persistent kernels.

frames [B, T, F] -> ``conv_layers`` x (Conv1d over time, stride 1, 'same' padding, clipped ReLU)
-> ``layers`` recurrent layers (PersistentGRU, or PersistentRNN with relu/tanh) -> a Linear to
the classes at every frame.

The layout is Deep Speech 2's (Amodei et al. 2016): convolutions in front of the
recurrent layers and the clipped ReLU min(max(x, 0), 20); the recurrent layers are what Diamos
et al., "Persistent RNNs" (ICML 2016) run with the weights held on chip, the case that pays at
small per-GPU minibatches (4 in their strong-scaling study). Differences: convolutions over time
only (the features are the channels) and with stride 1, so frames stay one-to-one with their
labels (a per-frame loss, not CTC); no BatchNorm, whose batch statistics would make N ranks of
batch b differ from one rank of batch N*b (see ddtrain/models/convnet.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ddtrain.config import ConfigError, check_choice, check_positive, check_positives
from ddtrain.data.spec import DataSpec
from ddtrain.kernels.persistent_rnn import PersistentGRU, PersistentRNN
from ddtrain.kernels.rnn_plan import PATHS
from ddtrain.kernels.rnn_reference import GATES
from ddtrain.registry import ModelEntry

# Deep Speech 2's clip: ReLU outputs capped at 20 keep the activations bounded.
RELU_CLIP = 20.0


@dataclass(frozen=True)
class PRNNConfig:
    name: str = "prnn"
    conv_layers: int = 1  # Conv1d layers over time in front of the recurrence (0: none)
    conv_channels: int = 128
    kernel: int = 5  # frames each conv sees; odd, so stride-1 'same' padding keeps every frame
    cell: str = "gru"  # gru | rnn
    nonlinearity: str = "relu"  # cell=rnn only: relu | tanh
    hidden: int = 128
    layers: int = 3  # recurrent layers
    path: str = "auto"  # one of the planner's PATHS (ddtrain/kernels/rnn_plan.py picks among them)


def validate(m: PRNNConfig) -> None:
    check_positive("model.conv_layers", m.conv_layers, zero_ok=True)
    check_positives("model", m, "conv_channels", "kernel", "hidden", "layers")
    if m.kernel % 2 == 0:
        raise ConfigError(f"model.kernel={m.kernel} must be odd (stride-1 'same' padding keeps one "
                          "output per frame only for odd kernels); e.g. 3 or 5")
    check_choice("model.cell", m.cell, ["gru", "rnn"])
    check_choice("model.nonlinearity", m.nonlinearity, ["relu", "tanh"])
    check_choice("model.path", m.path, PATHS)


class PRNN(nn.Module):
    def __init__(self, cfg: PRNNConfig, spec: DataSpec) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        channels = spec.features
        for _ in range(cfg.conv_layers):
            convs += [nn.Conv1d(channels, cfg.conv_channels, cfg.kernel, padding=cfg.kernel // 2),
                      nn.Hardtanh(0.0, RELU_CLIP)]
            channels = cfg.conv_channels
        self.conv = nn.Sequential(*convs)
        # Kept as the attribute ``rnn`` with torch's parameter names (rnn.weight_ih_l0, ...), so a
        # state_dict moves between this model and one built on torch.nn.GRU / nn.RNN.
        if cfg.cell == "gru":
            self.rnn = PersistentGRU(channels, cfg.hidden, cfg.layers, path=cfg.path)
        else:
            self.rnn = PersistentRNN(channels, cfg.hidden, cfg.layers, nonlinearity=cfg.nonlinearity,
                                     path=cfg.path)
        self.head = nn.Linear(cfg.hidden, spec.num_classes)
        self.seq_len = spec.seq_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Conv1d reads [B, channels, T]; the recurrence runs time-major [T, B, channels].
        h = self.conv(x.transpose(1, 2)).permute(2, 0, 1)
        h, _ = self.rnn(h)  # h0 = 0 on every call
        return self.head(h).transpose(0, 1)  # [B, T, classes]

    def flops_per_sample(self) -> int:
        """Training FLOPs of one utterance (forward + backward), 2 per multiply-add.

        Forward, per frame (T = seq_len frames per sample):
          conv layer, kernel k, C_in -> C_out: 2*k*C_in*C_out (stride 1, 'same' padding: one
            output per frame; the padded border frames are counted like the rest);
          recurrent layer with input size I, hidden size H and G gates (GRU 3, RNN 1):
            G*(2*I*H + 2*H*H), the input projection and the recurrent matmul (the gate equations
            are in ddtrain/kernels/rnn_reference.py). The recurrent part is 2*G*H^2 per sample
            per step, i.e. the kernel benchmarks' 2*G*H^2*B per step for a batch of B;
          head: 2*H*classes.
        Training = 3x forward (input and weight gradients) for every layer except the first,
        which reads the data: that needs no input gradient, so it costs 2x (forward + weight
        gradient), as the stem in ResidualNet.flops_per_sample.
        Not counted: biases, the clipped ReLU, gate nonlinearities and elementwise products,
        transposes. Slight overcount: h0 = 0 needs no gradient, so backward skips the first
        step's input-gradient matmul, 2*G*H*H per layer per sample; that is 1/(3T) of the
        recurrent term at most (under 1% of the total at T >= 34; tested exactly in
        tests/unit/test_models.py).
        """
        rnn, gates = self.rnn, GATES[self.rnn.cell]
        # (forward FLOPs per frame, reads the data) of each layer that has weights, in order
        layers: list[tuple[int, bool]] = []
        for conv in (m for m in self.conv if isinstance(m, nn.Conv1d)):
            layers.append((2 * conv.kernel_size[0] * conv.in_channels * conv.out_channels, not layers))
        for layer in range(rnn.num_layers):
            fan_in = rnn.input_size if layer == 0 else rnn.hidden_size
            # Only the input projection's input can be the data; the recurrent matmul reads h.
            projection, recurrent = gates * 2 * fan_in * rnn.hidden_size, gates * 2 * rnn.hidden_size**2
            layers.append((projection, not layers))
            layers.append((recurrent, False))
        layers.append((2 * self.head.in_features * self.head.out_features, False))
        per_frame = sum((2 if reads_data else 3) * flops for flops, reads_data in layers)
        return self.seq_len * per_frame


ENTRY = ModelEntry(name="prnn", schema=PRNNConfig, input_kind="frames", build=PRNN, validate=validate)
