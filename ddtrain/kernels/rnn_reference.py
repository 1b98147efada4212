"""The recurrences of ``PersistentRNN``/``PersistentGRU`` as plain-torch time loops.

This is the definition the Triton kernels are tested against (run it in float64), the CPU path of
the modules, and what ``torch.autograd.gradcheck`` checks. Layout and gate order are exactly
torch.nn.RNN's and torch.nn.GRU's, so a torch module's weights give the same outputs:

  RNN:  h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh),           act in {tanh, relu}
  GRU:  r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)                  (rows 0:H of W_*)
        z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)                  (rows H:2H)
        n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))               (rows 2H:3H)
        h_t = (1 - z) * n + z * h_{t-1}

Tensors are time-major: x [T, B, I], h0 [B, H]; the result is (h_1..h_T as [T, B, H], h_T).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("tanh", "relu")
GATES = {"rnn": 1, "gru": 3}


def check_activation(nonlinearity: str) -> None:
    if nonlinearity not in ACTIVATIONS:
        raise ValueError(f"nonlinearity={nonlinearity!r} is not supported; use one of {ACTIVATIONS}")


def rnn_cell_step(xw_t, h, w_hh, b_hh, nonlinearity: str):
    """One step given the precomputed input projection ``xw_t = x_t W_ih^T + b_ih``."""
    pre = xw_t + F.linear(h, w_hh, b_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def gru_cell_step(xw_t, h, w_hh, b_hh):
    xr, xz, xn = xw_t.chunk(3, dim=-1)
    hr, hz, hn = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h


def recurrence_reference(cell: str, xw, h0, w_hh, b_hh, nonlinearity: str = "tanh"):
    """The recurrence alone: xw [T, B, gates*H] already holds the input projection (with b_ih)."""
    outs = []
    h = h0
    for t in range(xw.shape[0]):
        if cell == "gru":
            h = gru_cell_step(xw[t], h, w_hh, b_hh)
        else:
            h = rnn_cell_step(xw[t], h, w_hh, b_hh, nonlinearity)
        outs.append(h)
    return torch.stack(outs), h


def layer_reference(cell: str, x, h0, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity: str = "tanh"):
    """One layer: the input projection for all T as one GEMM, then the time loop."""
    if cell not in GATES:
        raise ValueError(f"cell={cell!r} is unknown; use 'rnn' or 'gru'")
    check_activation(nonlinearity)
    xw = F.linear(x, w_ih, b_ih)
    return recurrence_reference(cell, xw, h0, w_hh, b_hh, nonlinearity)
