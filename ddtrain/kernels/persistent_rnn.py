"""``PersistentRNN`` and ``PersistentGRU``: drop-in torch.nn.RNN / torch.nn.GRU with persistent kernels.

Per layer: the input projection for all T steps is one GEMM (``F.linear``, so autograd gives dW_ih
and dx as one GEMM each); the recurrence is ``_Recurrence``, whose backward runs the dh recurrence
in the kernel and then forms dW_hh as ONE GEMM over all T steps (and db_hh as one sum).

Parameters carry torch's names and layout (``weight_ih_l0``, ``weight_hh_l0``, ``bias_ih_l0``,
``bias_hh_l0``, gate order r|z|n), so ``load_state_dict`` takes a torch module's ``state_dict()``.

Which path runs (``path=``): ``auto`` picks the persistent kernel on CUDA when it fits on chip, else
the step-wise kernel, else cuDNN (torch's own module), and the plain-torch reference loop on CPU.
The choice and its one-line reason are logged once per shape and kept in ``last_plan``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from ddtrain.kernels.rnn_plan import MATMULS, PATHS, Device, Plan, plan_recurrence
from ddtrain.kernels.rnn_reference import ACTIVATIONS, GATES, recurrence_reference
from ddtrain.perf import opcount

log = logging.getLogger(__name__)

try:  # Triton is optional: without it CUDA runs cuDNN and CPU the reference loop.
    from ddtrain.kernels import rnn_triton

    TRITON_REASON = ""
except Exception as exc:  # ImportError, or a broken Triton install
    rnn_triton = None
    TRITON_REASON = f"{type(exc).__name__}: {exc}".splitlines()[0]

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def device_info(device: torch.device, want: str = "auto") -> Device | None:
    """The planner's view of ``device``: None for CPU, where ``auto`` runs the reference loop.

    Under TRITON_INTERPRET=1 an explicit kernel path runs on CPU tensors as if on a GPU with one
    SM (programs run one after another there): that is how CI exercises the kernels.
    """
    if device.type != "cuda":
        interpreting = rnn_triton is not None and rnn_triton.INTERPRET
        return Device(sm_count=1) if interpreting and want in ("persistent", "stepwise") else None
    props = torch.cuda.get_device_properties(device)
    return Device(props.multi_processor_count, getattr(props, "regs_per_multiprocessor", 65536),
                  capability=10 * props.major + props.minor,
                  shared_per_block=getattr(props, "shared_memory_per_block_optin", 0))


class _Recurrence(torch.autograd.Function):
    """hs = recurrence(xw, h0; W_hh, b_hh) on the Triton kernels; backward returns
    (dxw, dh0, dW_hh, db_hh)."""

    @staticmethod
    def forward(ctx, xw, h0, w_hh, b_hh, cell, act, plan, check):
        hbuf, gates, sync = rnn_triton.recurrence_forward(
            cell, xw.contiguous(), h0.contiguous(), w_hh.contiguous(),
            None if b_hh is None else b_hh.contiguous(), act, plan,
            save=any(ctx.needs_input_grad[:4]),  # the GRU's gate values are kept only for a backward
        )
        if check:
            _raise_if_failed(sync, plan, "forward")
        ctx.cell, ctx.act, ctx.plan, ctx.check, ctx.has_bias = cell, act, plan, check, b_hh is not None
        ctx.save_for_backward(hbuf, gates, w_hh)
        return hbuf[1:]

    @staticmethod
    def backward(ctx, dy):
        hbuf, gates, w_hh = ctx.saved_tensors
        gx, gh, dh0, sync = rnn_triton.recurrence_backward(
            ctx.cell, dy.contiguous(), hbuf, gates, w_hh.contiguous(), ctx.act, ctx.plan
        )
        if ctx.check:
            _raise_if_failed(sync, ctx.plan, "backward")
        T, B, H = dy.shape
        gh2 = gh.reshape(T * B, -1)
        # The weight gradient of the whole sequence as one GEMM: sum_t gh_t^T h_{t-1}.
        dw = gh2.t().mm(hbuf[:-1].reshape(T * B, H))
        db = gh2.sum(0) if ctx.has_bias else None
        return gx, dh0.to(dy.dtype), dw, db, None, None, None, None


def _raise_if_failed(sync, plan: Plan, phase: str) -> None:
    if rnn_triton.barrier_failed(sync):
        raise RuntimeError(
            f"persistent RNN {phase}: the grid barrier timed out ({plan.programs} programs were not all "
            "resident, e.g. SMs held by other kernels); use path=stepwise"
        )


class _PersistentBase(nn.Module):
    cell = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        nonlinearity: str = "tanh",
        path: str = "auto",
        mm: str = "fma",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if nonlinearity not in ACTIVATIONS:
            raise ValueError(f"nonlinearity={nonlinearity!r} is not supported; use one of {ACTIVATIONS}")
        if path not in PATHS:
            raise ValueError(f"path={path!r} is unknown; choose one of {', '.join(PATHS)}")
        if mm not in MATMULS:
            raise ValueError(f"mm={mm!r} is unknown; choose one of {', '.join(MATMULS)}")
        self.mm = mm
        if min(input_size, hidden_size, num_layers) < 1:
            raise ValueError("input_size, hidden_size and num_layers must be positive")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.nonlinearity, self.path = bias, batch_first, nonlinearity, path
        self.last_plan: Plan | None = None
        self._checked: set[tuple] = set()
        gates = GATES[self.cell]
        kw = {"device": device, "dtype": dtype}
        rows = gates * hidden_size
        for layer in range(num_layers):
            fan_in = input_size if layer == 0 else hidden_size
            shapes = {"weight_ih": (rows, fan_in), "weight_hh": (rows, hidden_size)}
            if bias:
                shapes.update(bias_ih=(rows,), bias_hh=(rows,))
            for name, shape in shapes.items():
                self.register_parameter(f"{name}_l{layer}", nn.Parameter(torch.empty(shape, **kw)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torch.nn.RNNBase's initialisation: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias.
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def _layer_params(self, layer: int):
        get = lambda name: getattr(self, f"{name}_l{layer}", None)
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    def plan_for(self, batch: int, dtype: torch.dtype, device: torch.device) -> Plan:
        if device.type == "meta":
            # Shapes only, for a device model's op counts: the time loop, whatever path the module
            # asks for; the device model plans the path for its target device itself.
            return Plan("reference", reason="meta device: the time loop is recorded, one region per layer")
        dev = device_info(device, self.path)
        gates = GATES[self.cell]
        if dev is not None and dtype not in KERNEL_DTYPES and self.path == "auto":
            return Plan("cudnn", reason=f"dtype {dtype} has no kernel: cuDNN")
        return plan_recurrence(
            hidden=self.hidden_size, batch=batch, gates=gates,
            element_size=dtype.itemsize, device=dev,
            want=self.path, triton_ok=rnn_triton is not None, triton_reason=TRITON_REASON, mm=self.mm,
        )

    def forward(self, input: torch.Tensor, hx: torch.Tensor | None = None):
        unbatched = input.dim() == 2
        if input.dim() not in (2, 3):
            shape = tuple(input.shape)
            raise ValueError(f"input must be [T, B, I], [B, T, I] or unbatched [T, I]; got {shape}")
        x = input.unsqueeze(1) if unbatched else (input.transpose(0, 1) if self.batch_first else input)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features; the module has input_size={self.input_size}")
        T, B, _ = x.shape
        dtype = x.dtype
        if hx is None:
            hx = x.new_zeros(self.num_layers, B, self.hidden_size)
        elif unbatched:
            hx = hx.unsqueeze(1)
        plan = self.plan_for(B, dtype, x.device)
        self._note(plan, B, dtype)
        if plan.path == "cudnn":
            out, h_n = self._cudnn(x, hx)
        else:
            finals = []
            for layer in range(self.num_layers):
                # Under autocast x may be bf16 while parameters are fp32: cast (differentiably).
                w_ih, w_hh, b_ih, b_hh = (p if p is None else p.to(dtype) for p in self._layer_params(layer))
                h0 = hx[layer].to(dtype)
                if plan.path == "reference":
                    xw = F.linear(x, w_ih, b_ih)
                    # One region: what a GPU runs as one persistent kernel (a device model costs it so).
                    x, h_last = opcount.region(
                        "recurrence",
                        lambda xw=xw, h0=h0, w_hh=w_hh, b_hh=b_hh: recurrence_reference(
                            self.cell, xw, h0, w_hh, b_hh, self.nonlinearity),
                        xw, steps=T, hidden=self.hidden_size, batch=B, gates=GATES[self.cell],
                        element_size=dtype.itemsize, path=self.path, mm=self.mm)
                else:
                    xw = F.linear(x, w_ih, b_ih)  # every step's input projection: one GEMM
                    key = (plan, B, T, dtype)
                    check = key not in self._checked  # one host sync per new shape, not per step
                    self._checked.add(key)
                    x = _Recurrence.apply(xw, h0, w_hh, b_hh, self.cell, self.nonlinearity, plan, check)
                    h_last = x[-1]
                finals.append(h_last)
            out, h_n = x, torch.stack(finals)
        if unbatched:
            return out.squeeze(1), h_n.squeeze(1)
        return (out.transpose(0, 1) if self.batch_first else out), h_n

    def _cudnn(self, x, hx):
        """torch's own module on our parameters (same names), i.e. cuDNN on CUDA."""
        if not hasattr(self, "_twin"):
            kw = dict(num_layers=self.num_layers, bias=self.bias, device="meta")
            if self.cell == "gru":
                twin = nn.GRU(self.input_size, self.hidden_size, **kw)
            else:
                twin = nn.RNN(self.input_size, self.hidden_size, nonlinearity=self.nonlinearity, **kw)
            object.__setattr__(self, "_twin", twin)  # not a submodule: no duplicate state_dict keys
        params = {name: p.to(x.dtype) for name, p in self.named_parameters()}
        return torch.func.functional_call(self._twin, params, (x, hx.to(x.dtype)))

    def _note(self, plan: Plan, batch: int, dtype) -> None:
        if plan != self.last_plan:
            log.info("%s(hidden=%d, batch=%d, %s): %s", type(self).__name__, self.hidden_size, batch,
                     str(dtype).removeprefix("torch."), plan.reason)
        self.last_plan = plan

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, path={self.path}"
        s += f", mm={self.mm}" if self.mm != "fma" else ""
        if self.cell == "rnn":
            s += f", nonlinearity={self.nonlinearity}"
        return s + ("" if self.bias else ", bias=False") + (", batch_first=True" if self.batch_first else "")


class PersistentRNN(_PersistentBase):
    """torch.nn.RNN (tanh or relu) with the recurrence on persistent Triton kernels."""

    cell = "rnn"


class PersistentGRU(_PersistentBase):
    """torch.nn.GRU with the recurrence on persistent Triton kernels."""

    cell = "gru"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, path: str = "auto", mm: str = "fma", device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, "tanh", path, mm, device,
                         dtype)
