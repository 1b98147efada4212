"""Triton kernels for the recurrence of a plain RNN (tanh/relu) and a GRU, forward and backward.

The math is ``rnn_reference.py``'s; this file is only about where the data lives.

Mapping. Program p owns hidden units n in [p*BLOCK_H, (p+1)*BLOCK_H): the rows of U = W_hh
that produce them (one row block per gate). It loads that slice ONCE, before the time loop, and
keeps it in registers for every step of the launch: the weights are read from DRAM once per
sequence instead of once per step (Diamos et al., ICML 2016, "Persistent RNNs"). Each step a
program reads the whole previous h (B x H, from L2), computes its units, writes them, and waits at
a grid-wide barrier until every program has written its part.

The same kernels run three ways (chosen by ``rnn_plan.plan_recurrence``):
  * persistent: one launch for all T steps, grid = programs <= SMs, barrier between steps;
  * step-wise: one launch per step, the launch boundary is the barrier (the fallback when a slice
    does not fit on chip: weights are re-read from L2 every step);
  * under TRITON_INTERPRET=1 on CPU, where programs run one after another, tests use step-wise
    launches with several programs, or a persistent launch with ONE program (its barrier is then
    trivially met), so CI runs every line of the kernels except a real multi-program wait.

Backward runs the dh recurrence with U^T the same way: the slice program p needs is U's
*columns* n, i.e. the same tile read with swapped strides, so no transposed copy is made. The
weight gradients are not computed here: the caller does one GEMM over all T for dW_hh (and dW_ih).

Numerics: products and sums in fp32 (fp64 for fp64 inputs, which is how the kernels are checked
against the reference); the tile is stored in the input dtype to halve registers;
h, gate values and gradients are rounded to the input dtype where they are written to memory.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
ACT_CODES = {"tanh": 0, "relu": 1}
# Polls of the barrier wait before a program gives up (of the order of a second on a GPU): a
# program that is not resident cannot arrive, and a hung job is worse than a clear error.
MAX_SPIN = 1 << 20


def _cooperative_supported() -> bool:
    """Triton >= 3.3 can launch a cooperative grid: the driver then refuses a grid that cannot be
    co-resident instead of letting the barrier wait forever."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_cooperative_grid" in getattr(CUDAOptions, "__dataclass_fields__", {})


COOPERATIVE = (not INTERPRET) and _cooperative_supported()


@triton.jit
def _tanh(x):
    # tanh(x) = 2*sigmoid(2x) - 1: tl.sigmoid exists on every backend and in the interpreter.
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _load_slice(u_ptr, gate, n, n_mask, k, k_mask, H, TRANSPOSED: tl.constexpr):
    """tile[k, j] = U[gate*H + n_j, k] (forward) or U[gate*H + k, n_j] (backward, U^T)."""
    base = u_ptr + gate * H * H
    if TRANSPOSED:
        ptrs = base + k[:, None] * H + n[None, :]
    else:
        ptrs = base + n[None, :] * H + k[:, None]
    return tl.load(ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)


@triton.jit
def _rows_times_slice(
    h_ptr, stride_b, B, u, k, k_mask,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, ACC: tl.constexpr, DOT: tl.constexpr, UPCAST: tl.constexpr,
):
    """acc[b, j] = sum_k h[b, k] * tile[k, j] for b < B, in the accumulator dtype ACC.

    h rows come from L2 (``.cg`` skips L1, which is not coherent with other SMs' writes).
    FMA mapping (DOT=False): one batch row at a time, broadcast over the tile where it sits in
    registers and reduced over k: B reductions per step, no padding of the batch.
    DOT mapping: one tl.dot of the [BLOCK_B, H] rows with the tile (tensor cores for 16-bit
    inputs; BLOCK_B and BLOCK_H >= 16, so a minibatch of 4 pads to 16 rows). UPCAST feeds the dot
    fp32/fp64 operands: needed for fp64, and in the interpreter, whose 16-bit dot is wrong.
    Which is faster at a small minibatch is for the benchmark (--mm) to say.
    """
    rows = tl.arange(0, BLOCK_B)
    if DOT:
        hm = (rows[:, None] < B) & k_mask[None, :]
        hb = tl.load(h_ptr + rows[:, None] * stride_b + k[None, :], mask=hm, other=0.0, cache_modifier=".cg")
        if UPCAST:
            acc = tl.dot(hb.to(ACC), u.to(ACC), input_precision="ieee", out_dtype=ACC)
        else:
            acc = tl.dot(hb.to(u.dtype), u, input_precision="ieee", out_dtype=ACC)
    else:
        acc = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
        for b in range(0, B):
            hb = tl.load(h_ptr + b * stride_b + k, mask=k_mask, other=0.0, cache_modifier=".cg")
            part = tl.sum(u.to(ACC) * hb.to(ACC)[:, None], axis=0)
            acc = tl.where(rows[:, None] == b, part[None, :], acc)
    return acc


@triton.jit
def _grid_sync(bar_ptr, err_ptr, target, MAX_SPIN: tl.constexpr):
    """Wait until ``target`` arrivals have been counted at ``bar_ptr`` (a counter zeroed per launch).

    The CTA barrier makes every thread's stores of this step precede the release-add; the
    acquire-loads order the next step's reads after everyone's arrival. A program that waits
    MAX_SPIN polls sets ``err`` and releases all others, so a grid that is not co-resident ends
    in a reported error (and NaN outputs), not a hang.
    """
    tl.debug_barrier()
    tl.atomic_add(bar_ptr, 1, sem="release", scope="gpu")
    spins = 0
    while (tl.atomic_add(bar_ptr, 0, sem="acquire", scope="gpu") < target) & (spins < MAX_SPIN):
        spins += 1
    if spins >= MAX_SPIN:
        tl.atomic_xchg(err_ptr, 1)
        tl.atomic_add(bar_ptr, 1 << 30)
    tl.debug_barrier()


@triton.jit
def _program_indices(B, H, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, H_PAD: tl.constexpr):
    """This program's hidden units n, all columns k, batch rows b, and the [B, units] tile's mask
    and offsets within a [B, H] array."""
    n = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    n_mask = n < H
    k = tl.arange(0, H_PAD)
    b = tl.arange(0, BLOCK_B)
    m2 = (b < B)[:, None] & n_mask[None, :]
    return n, n_mask, k, k < H, b, m2, b[:, None] * H + n[None, :]


@triton.jit
def _recurrence_fwd(
    xw_ptr, hbuf_ptr, u_ptr, bhh_ptr, gates_ptr, bar_ptr, err_ptr,
    B, H, t0, n_steps,
    GATES: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE: tl.constexpr,
    BARRIER: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, H_PAD: tl.constexpr,
    ACC: tl.constexpr, DOT: tl.constexpr, UPCAST: tl.constexpr, MAX_SPIN: tl.constexpr,
):
    """Steps t0 .. t0+n_steps-1, with hbuf[0] = h0 and hbuf[t+1] = h_t.
    xw [T, B, GATES*H] is the input projection (with b_ih); gates [T, B, 4H] (GRU, if SAVE) keeps
    r, z, n and (h W_hn^T + b_hn) for the backward."""
    nprog = tl.num_programs(0)
    n, n_mask, k, k_mask, b, m2, bn = _program_indices(B, H, BLOCK_B, BLOCK_H, H_PAD)
    G = GATES * H
    out_ty = hbuf_ptr.dtype.element_ty
    err = tl.load(err_ptr)  # 0: the flag is zeroed per launch; loaded to fix its type

    # The persistent part: this program's rows of U, loaded once for all steps.
    u0 = _load_slice(u_ptr, 0, n, n_mask, k, k_mask, H, False)
    bias0 = tl.zeros((BLOCK_H,), dtype=ACC)
    if HAS_BIAS:
        bias0 = tl.load(bhh_ptr + n, mask=n_mask, other=0.0).to(ACC)
    if GATES == 3:
        u1 = _load_slice(u_ptr, 1, n, n_mask, k, k_mask, H, False)
        u2 = _load_slice(u_ptr, 2, n, n_mask, k, k_mask, H, False)
        bias1 = tl.zeros((BLOCK_H,), dtype=ACC)
        bias2 = tl.zeros((BLOCK_H,), dtype=ACC)
        if HAS_BIAS:
            bias1 = tl.load(bhh_ptr + H + n, mask=n_mask, other=0.0).to(ACC)
            bias2 = tl.load(bhh_ptr + 2 * H + n, mask=n_mask, other=0.0).to(ACC)

    for s in range(0, n_steps):
        t = t0 + s
        h_prev = hbuf_ptr + t * B * H
        xw_t = xw_ptr + t * B * G + b[:, None] * G + n[None, :]
        a0 = _rows_times_slice(h_prev, H, B, u0, k, k_mask, BLOCK_B, BLOCK_H, ACC, DOT,
                               UPCAST) + bias0[None, :]
        x0 = tl.load(xw_t, mask=m2, other=0.0).to(ACC)
        if GATES == 1:
            if ACT == 0:
                h = _tanh(x0 + a0)
            else:
                h = tl.maximum(x0 + a0, 0.0)
        else:
            a1 = _rows_times_slice(h_prev, H, B, u1, k, k_mask, BLOCK_B, BLOCK_H, ACC, DOT,
                                   UPCAST) + bias1[None, :]
            a2 = _rows_times_slice(h_prev, H, B, u2, k, k_mask, BLOCK_B, BLOCK_H, ACC, DOT,
                                   UPCAST) + bias2[None, :]
            x1 = tl.load(xw_t + H, mask=m2, other=0.0).to(ACC)
            x2 = tl.load(xw_t + 2 * H, mask=m2, other=0.0).to(ACC)
            r = tl.sigmoid(x0 + a0)
            z = tl.sigmoid(x1 + a1)
            c = _tanh(x2 + r * a2)
            hp = tl.load(h_prev + bn, mask=m2, other=0.0, cache_modifier=".cg").to(ACC)
            h = (1.0 - z) * c + z * hp
            if SAVE:
                g_t = gates_ptr + t * B * 4 * H + b[:, None] * 4 * H + n[None, :]
                gty = gates_ptr.dtype.element_ty
                tl.store(g_t, r.to(gty), mask=m2)
                tl.store(g_t + H, z.to(gty), mask=m2)
                tl.store(g_t + 2 * H, c.to(gty), mask=m2)
                tl.store(g_t + 3 * H, a2.to(gty), mask=m2)
        if err != 0:
            h = h + float("nan")  # a barrier timed out: h_prev may be stale, so poison, never guess
        tl.store(hbuf_ptr + (t + 1) * B * H + bn, h.to(out_ty), mask=m2)
        if BARRIER:
            if s + 1 < n_steps:
                _grid_sync(bar_ptr, err_ptr, (s + 1) * nprog, MAX_SPIN)
                err = tl.load(err_ptr, cache_modifier=".cg")


@triton.jit
def _recurrence_bwd(
    dy_ptr, hbuf_ptr, gates_ptr, u_ptr, gx_ptr, gh_ptr, carry_ptr, bar_ptr, err_ptr,
    T, B, H, t0, n_steps,
    GATES: tl.constexpr, ACT: tl.constexpr, BARRIER: tl.constexpr, FINISH: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, H_PAD: tl.constexpr, ACC: tl.constexpr,
    DOT: tl.constexpr, UPCAST: tl.constexpr, MAX_SPIN: tl.constexpr,
):
    """Steps t0, t0-1, ..., t0-n_steps+1 of the dh recurrence (descending).

    gh[t] [B, GATES*H] is the gradient w.r.t. the hidden-side pre-activations (h W_hh^T + b_hh),
    gx[t] the one w.r.t. the input-side pre-activations (xw); they differ only in the GRU's
    candidate gate. carry [B, H] holds, between launches, the part of dL/dh_t already known
    (GRU: dh_{t+1} * z_{t+1}); the part that needs every program's gh[t+1], gh[t+1] @ U, is
    added at the start of step t, after the barrier. With FINISH the launch ends with
    dh0 = carry + gh[0] @ U, written to carry.
    """
    nprog = tl.num_programs(0)
    n, n_mask, k, k_mask, b, m2, bn = _program_indices(B, H, BLOCK_B, BLOCK_H, H_PAD)
    G = GATES * H
    gty = gh_ptr.dtype.element_ty

    u0 = _load_slice(u_ptr, 0, n, n_mask, k, k_mask, H, True)
    if GATES == 3:
        u1 = _load_slice(u_ptr, 1, n, n_mask, k, k_mask, H, True)
        u2 = _load_slice(u_ptr, 2, n, n_mask, k, k_mask, H, True)
    carry = tl.load(carry_ptr + bn, mask=m2, other=0.0).to(ACC)
    err = tl.load(err_ptr)  # 0: zeroed per launch

    for s in range(0, n_steps + FINISH):
        t = t0 - s
        # dL/dh_t, the part through step t+1's hidden-side pre-activations: needs all of gh[t+1].
        if t < T - 1:
            gnext = gh_ptr + (t + 1) * B * G
            carry += _rows_times_slice(gnext, G, B, u0, k, k_mask, BLOCK_B, BLOCK_H, ACC, DOT,
                                       UPCAST)
            if GATES == 3:
                carry += _rows_times_slice(gnext + H, G, B, u1, k, k_mask, BLOCK_B, BLOCK_H, ACC, DOT,
                                           UPCAST)
                carry += _rows_times_slice(gnext + 2 * H, G, B, u2, k, k_mask, BLOCK_B, BLOCK_H, ACC, DOT,
                                           UPCAST)
        if s < n_steps:
            dh = tl.load(dy_ptr + t * B * H + bn, mask=m2, other=0.0).to(ACC) + carry
            gh_t = gh_ptr + t * B * G + b[:, None] * G + n[None, :]
            if GATES == 1:
                h = tl.load(hbuf_ptr + (t + 1) * B * H + bn, mask=m2, other=0.0).to(ACC)
                if ACT == 0:
                    g = dh * (1.0 - h * h)
                else:
                    g = tl.where(h > 0.0, dh, 0.0)
                tl.store(gh_t, g.to(gty), mask=m2)
                carry = tl.zeros((BLOCK_B, BLOCK_H), dtype=ACC)
            else:
                g_t = gates_ptr + t * B * 4 * H + b[:, None] * 4 * H + n[None, :]
                r = tl.load(g_t, mask=m2, other=0.0).to(ACC)
                z = tl.load(g_t + H, mask=m2, other=0.0).to(ACC)
                c = tl.load(g_t + 2 * H, mask=m2, other=0.0).to(ACC)
                an = tl.load(g_t + 3 * H, mask=m2, other=0.0).to(ACC)
                hp = tl.load(hbuf_ptr + t * B * H + bn, mask=m2, other=0.0).to(ACC)
                dc = dh * (1.0 - z)
                dz = dh * (hp - c)
                dan = dc * (1.0 - c * c)  # d(pre-activation of n)
                dar = dan * an * r * (1.0 - r)
                daz = dz * z * (1.0 - z)
                gx_t = gx_ptr + t * B * G + b[:, None] * G + n[None, :]
                tl.store(gx_t, dar.to(gty), mask=m2)
                tl.store(gx_t + H, daz.to(gty), mask=m2)
                tl.store(gx_t + 2 * H, dan.to(gty), mask=m2)
                tl.store(gh_t, dar.to(gty), mask=m2)
                tl.store(gh_t + H, daz.to(gty), mask=m2)
                tl.store(gh_t + 2 * H, (dan * r).to(gty), mask=m2)
                carry = dh * z
            if BARRIER:
                _grid_sync(bar_ptr, err_ptr, (s + 1) * nprog, MAX_SPIN)
                err = tl.load(err_ptr, cache_modifier=".cg")
        if err != 0:
            carry = carry + float("nan")  # poisons every later gh, gx and dh0
    tl.store(carry_ptr + bn, carry.to(carry_ptr.dtype.element_ty), mask=m2)


# ---------------------------------------------------------------------------------------- host side
def _block_b(batch: int, dot: bool) -> int:
    return max(16 if dot else 2, triton.next_power_of_2(batch))


def _launch(kernel, plan, args, max_spin: int, **meta):
    """Launch ``plan.programs`` programs; the persistent path asks for a cooperative grid."""
    extra = {}
    if plan.path == "persistent" and COOPERATIVE:
        extra["launch_cooperative_grid"] = True
    try:
        kernel[(plan.programs,)](*args, MAX_SPIN=max_spin, num_warps=plan.num_warps, **meta, **extra)
    except OutOfResources as e:
        # A shape the planner's compiled table does not cover: say which knob avoids it.
        raise RuntimeError(
            f"the {plan.path} recurrence kernel (mm={plan.mm}, {plan.programs} programs x {plan.block_h} "
            f"units, {plan.num_warps} warps) does not fit this GPU: {e} Use mm=fma, or path=cudnn for this "
            "layer"
        ) from e


def _sync_state(device) -> torch.Tensor:
    """[arrivals, error] for one launch's grid barrier."""
    return torch.zeros(2, dtype=torch.int32, device=device)


def barrier_failed(sync: torch.Tensor) -> bool:
    """Did a grid barrier time out? (Reads one int from the GPU: a host sync, so callers do it
    once per shape, not per step.)"""
    return bool(sync[1].item())


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _common_meta(cell, act, plan, batch, hidden, dtype):
    gates = 3 if cell == "gru" else 1
    acc = tl.float64 if _acc_dtype(dtype) == torch.float64 else tl.float32
    dot = plan.mm == "dot"
    return dict(
        GATES=gates, ACT=ACT_CODES[act], BLOCK_B=_block_b(batch, dot), BLOCK_H=plan.block_h,
        H_PAD=max(16, triton.next_power_of_2(hidden)), ACC=acc, DOT=dot,
        UPCAST=INTERPRET or dtype == torch.float64,
    )


def recurrence_forward(cell, xw, h0, w_hh, b_hh, act, plan, *, save: bool, max_spin: int = MAX_SPIN):
    """Run the recurrence over xw [T, B, gates*H]. Returns (hbuf [T+1, B, H], gates, sync state)."""
    T, B, _ = xw.shape
    H = h0.shape[-1]
    hbuf = torch.empty(T + 1, B, H, dtype=xw.dtype, device=xw.device)
    hbuf[0].copy_(h0)
    gates = torch.empty(T, B, 4 * H, dtype=xw.dtype, device=xw.device) if cell == "gru" and save else hbuf
    sync = _sync_state(xw.device)
    meta = _common_meta(cell, act, plan, B, H, xw.dtype)
    meta.update(HAS_BIAS=b_hh is not None, SAVE=cell == "gru" and save)
    bias = b_hh if b_hh is not None else w_hh  # any pointer; never read without HAS_BIAS

    def args(t0, n):
        return (xw, hbuf, w_hh, bias, gates, sync[0:1], sync[1:2], B, H, t0, n)

    if plan.path == "persistent":
        _launch(_recurrence_fwd, plan, args(0, T), max_spin, BARRIER=True, **meta)
    else:  # step-wise: the end of each launch is the barrier
        for t in range(T):
            _launch(_recurrence_fwd, plan, args(t, 1), max_spin, BARRIER=False, **meta)
    return hbuf, gates, sync


def recurrence_backward(cell, dy, hbuf, gates, w_hh, act, plan, *, max_spin: int = MAX_SPIN):
    """dL/d(outputs) dy [T, B, H] -> (gx, gh [T, B, gates*H], dh0 [B, H], sync state).

    dh0 is in the accumulator dtype (fp32, or fp64 for fp64 inputs)."""
    T, B, H = dy.shape
    G = (3 if cell == "gru" else 1) * H
    gh = torch.empty(T, B, G, dtype=dy.dtype, device=dy.device)
    gx = torch.empty_like(gh) if cell == "gru" else gh  # the RNN's two gradients coincide
    carry = torch.zeros(B, H, dtype=_acc_dtype(dy.dtype), device=dy.device)
    sync = _sync_state(dy.device)
    meta = _common_meta(cell, act, plan, B, H, dy.dtype)

    def args(t0, n):
        return (dy, hbuf, gates, w_hh, gx, gh, carry, sync[0:1], sync[1:2], T, B, H, t0, n)

    if plan.path == "persistent":
        _launch(_recurrence_bwd, plan, args(T - 1, T), max_spin, BARRIER=True, FINISH=1, **meta)
    else:
        for t in reversed(range(T)):
            _launch(_recurrence_bwd, plan, args(t, 1), max_spin, BARRIER=False, FINISH=0, **meta)
        _launch(_recurrence_bwd, plan, args(-1, 0), max_spin, BARRIER=False, FINISH=1, **meta)
    return gx, gh, carry, sync
