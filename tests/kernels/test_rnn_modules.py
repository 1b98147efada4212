"""PersistentRNN/PersistentGRU as drop-in torch.nn.RNN/GRU: names, layout, math, paths, errors."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from ddtrain.kernels import persistent_rnn as prnn
from ddtrain.kernels.persistent_rnn import PersistentGRU, PersistentRNN
from ddtrain.kernels.rnn_reference import layer_reference

KERNEL_PATHS = ["persistent", "stepwise"]
CAN_RUN_KERNELS = torch.cuda.is_available() or (prnn.rnn_triton is not None and prnn.rnn_triton.INTERPRET)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pairs():
    return [
        (lambda **k: nn.GRU(5, 12, **k), lambda **k: PersistentGRU(5, 12, **k)),
        (lambda **k: nn.RNN(5, 12, nonlinearity="relu", **k),
         lambda **k: PersistentRNN(5, 12, nonlinearity="relu", **k)),
        (lambda **k: nn.RNN(5, 12, **k), lambda **k: PersistentRNN(5, 12, **k)),
    ]


def compare(torch_mod, ours, batch_first: bool, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 4, 5, generator=g, dtype=torch.float64, device="cpu").to(DEVICE)
    x = x.requires_grad_()
    h0 = torch.randn(torch_mod.num_layers, 3 if batch_first else 4, 12, generator=g, dtype=torch.float64)
    h0 = h0.to(DEVICE)
    outs = []
    for m in (torch_mod, ours):
        out, h_n = m(x, h0)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).view_as(out)
        loss = (out * weights).sum()  # a different weight per output, so a permutation shows
        loss = loss + (h_n**2).sum()
        grads = torch.autograd.grad(loss, [x, *m.parameters()])
        outs.append((out, h_n, grads))
    (o1, h1, g1), (o2, h2, g2) = outs
    assert o1.shape == o2.shape and h1.shape == h2.shape
    torch.testing.assert_close(o2, o1, rtol=1e-10, atol=1e-12, msg=f"seed={seed}")
    torch.testing.assert_close(h2, h1, rtol=1e-10, atol=1e-12, msg=f"seed={seed}")
    for a, b in zip(g2, g1):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"seed={seed}")


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("pair", range(3))
@pytest.mark.parametrize("path", ["reference", "cudnn", *KERNEL_PATHS])
def test_a_torch_state_dict_loads_and_gives_the_same_outputs_and_gradients(pair, path, batch_first):
    if path in KERNEL_PATHS and not CAN_RUN_KERNELS:
        pytest.skip("needs a GPU or TRITON_INTERPRET=1 with Triton installed")
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    make_torch, make_ours = pairs()[pair]
    ref = make_torch(num_layers=2, batch_first=batch_first).double().to(DEVICE)
    ours = make_ours(num_layers=2, batch_first=batch_first, path=path).double().to(DEVICE)
    assert list(ours.state_dict()) == list(ref.state_dict())  # names and order
    ours.load_state_dict(ref.state_dict())
    compare(ref, ours, batch_first, seed)
    assert ours.last_plan.path == path


def test_without_bias_and_unbatched_input():
    ref = nn.GRU(5, 12, bias=False).double()
    ours = PersistentGRU(5, 12, bias=False).double()
    assert list(ours.state_dict()) == ["weight_ih_l0", "weight_hh_l0"]
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(7, 5, dtype=torch.float64)  # [T, I]
    (o1, h1), (o2, h2) = ref(x), ours(x)
    assert o2.shape == (7, 12) and h2.shape == (1, 12)
    torch.testing.assert_close(o2, o1)
    torch.testing.assert_close(h2, h1)


def test_reference_passes_gradcheck():
    """Finite differences against autograd on the reference loop, every cell, float64."""
    g = torch.Generator().manual_seed(int.from_bytes(os.urandom(4), "little"))
    for cell, act in [("rnn", "tanh"), ("rnn", "relu"), ("gru", "tanh")]:
        G = 3 if cell == "gru" else 1
        args = [
            torch.randn(3, 2, 4, generator=g, dtype=torch.float64),   # x
            torch.randn(2, 5, generator=g, dtype=torch.float64),      # h0
            torch.randn(G * 5, 4, generator=g, dtype=torch.float64),  # W_ih
            torch.randn(G * 5, 5, generator=g, dtype=torch.float64) / 3,  # W_hh
            torch.randn(G * 5, generator=g, dtype=torch.float64),     # b_ih
            torch.randn(G * 5, generator=g, dtype=torch.float64),     # b_hh
        ]
        args = [a.requires_grad_() for a in args]

        def f(*a, cell=cell, act=act):
            return layer_reference(cell, *a, nonlinearity=act)

        assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5), (cell, act)


def test_auto_runs_the_reference_loop_on_cpu_and_says_why():
    m = PersistentGRU(4, 8)
    m(torch.randn(3, 2, 4))
    assert m.last_plan.path == "reference" and "no CUDA device" in m.last_plan.reason


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: PersistentRNN(4, 8, nonlinearity="sigmoid"), "nonlinearity='sigmoid' is not supported"),
        (lambda: PersistentGRU(4, 8, path="fast"), "path='fast' is unknown"),
        (lambda: PersistentGRU(4, 0), "must be positive"),
    ],
)
def test_bad_arguments_are_one_line_errors(build, message):
    with pytest.raises(ValueError, match=message) as info:
        build()
    assert "\n" not in str(info.value)


def test_bad_input_shapes_are_one_line_errors():
    m = PersistentGRU(4, 8)
    with pytest.raises(ValueError, match="input has 5 features; the module has input_size=4"):
        m(torch.randn(3, 2, 5))
    with pytest.raises(ValueError, match=r"input must be \[T, B, I\]"):
        m(torch.randn(3))
