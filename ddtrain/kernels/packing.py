"""One-launch gradient packing: many tensors <-> one flat buffer, scaled and cast on the way.

Why: a gradient bucket holds 100-400 tensors of very mixed sizes. Copying them one by one costs a
kernel launch each (several microseconds of host time apiece) and the small ones never reach
full memory bandwidth. Here one launch moves the whole bucket, with the mapping of the
"multi-tensor apply" kernels behind torch's and apex's fused optimizers: the work is cut into
blocks of ``BLOCK`` elements, and a table built once per bucket says, for each block, which
tensor it belongs to, where in that tensor it starts, how many elements it moves and where in
the flat buffer they go. That table depends only on the sizes; the one thing that changes from
step to step is the tensors' addresses, an int64 per tensor uploaded before each launch.

Arithmetic, identical in both back-ends and both directions: the value is widened to float32,
multiplied by ``scale`` (1/world_size when packing gradients) and rounded once, to nearest even,
into the target dtype. That is what ``torch.mul(fp32_grad, scale, out=bf16_view)`` does, so the
Triton path and the plain-torch path give bit-identical buffers.

Triton is optional: without it (or on a CPU without ``TRITON_INTERPRET=1``) ``triton_unavailable``
gives the one-line reason and callers use the torch path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

try:  # Optional: the module, the torch path and the reasons work without Triton.
    import triton
    import triton.language as tl

    _IMPORT_ERROR = ""
except Exception as exc:  # ImportError, or a broken install that fails while importing
    triton = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}".splitlines()[0]

BLOCK = 2048  # elements per program: 16 per thread at 4 warps, i.e. four 16-byte loads of fp32
NUM_WARPS = 4
ALIGN = 16  # bytes: the widest vector load/store a thread issues

if triton is not None:
    TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}

    @triton.jit
    def _to_bf16(y):
        """float32 -> bfloat16, nearest-even, written out with integer ops.

        The GPU's own conversion rounds the same way, but the interpreter truncates
        (triton 3.9 ``interpreter.cast_impl`` passes no rounding mode), so the CPU test run would
        disagree with torch in the last bit. NaN becomes torch's quiet NaN, 0x7FC0; adding the
        carry to a NaN could otherwise turn it into an infinity.
        """
        bits = y.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(y != y, 0x7FC0, rounded)
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)

    @triton.jit
    def _convert(x, scale, DTYPE: tl.constexpr):
        y = x.to(tl.float32) * scale
        if DTYPE == tl.bfloat16:
            out = _to_bf16(y)
        else:
            out = y.to(DTYPE)
        return out

    @triton.jit
    def _move_blocks(table, addrs, buf, scale, EXT: tl.constexpr, PACK: tl.constexpr,
                     BUF_VEC: tl.constexpr, BLOCK: tl.constexpr):
        """One program per table row (tensor, start, count, pos): ``count`` elements between
        tensor[start:] (dtype EXT, base address addrs[tensor]) and buf[pos:]. PACK: tensor -> buf."""
        row = table + tl.program_id(0) * 4
        tensor = tl.load(row)
        start = tl.load(row + 1)
        count = tl.load(row + 2)
        pos = tl.load(row + 3)
        addr = tl.load(addrs + tensor)
        idx = tl.arange(0, BLOCK)
        if (count == BLOCK) & (addr != 0) & (addr % 16 == 0) & (pos % BUF_VEC == 0):
            # A whole block with both ends 16-byte aligned (start is a multiple of BLOCK, the
            # buffer itself is aligned): say so, and the compiler emits 16-byte vector accesses.
            # The hints sit on pointers created inside this branch, so they cannot leak into
            # the general path below, where they would be false.
            ext = tl.multiple_of(addr.to(tl.pointer_type(EXT), bitcast=True) + start, 16)
            flat = tl.multiple_of(buf + pos, 16)
            if PACK:
                tl.store(flat + idx, _convert(tl.load(ext + idx), scale, buf.dtype.element_ty))
            else:
                tl.store(ext + idx, _convert(tl.load(flat + idx), scale, EXT))
        else:
            # A tail, an unaligned tensor or slot, or (packing) a missing source: masked.
            ext = addr.to(tl.pointer_type(EXT), bitcast=True) + start
            flat = buf + pos
            inside = idx < count
            if PACK:
                # Address 0 is a missing source: nothing is read and the slot is filled with zeros.
                x = tl.load(ext + idx, mask=idx < tl.where(addr != 0, count, 0), other=0.0)
                tl.store(flat + idx, _convert(x, scale, buf.dtype.element_ty), mask=inside)
            else:
                tl.store(ext + idx, _convert(tl.load(flat + idx, mask=inside), scale, EXT), mask=inside)

    INTERPRETED = type(_move_blocks).__name__ == "InterpretedFunction"  # TRITON_INTERPRET=1 at import
else:
    TL_DTYPES = {}
    INTERPRETED = False

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def unavailable_reason(import_error: str, interpreted: bool, device_type: str) -> str | None:
    """Why the Triton path cannot run on tensors of ``device_type`` (None: it can). Pure."""
    if import_error:
        return f"triton does not import ({import_error}); pip install triton"
    if device_type == "cuda" and interpreted:
        return "TRITON_INTERPRET=1 runs kernels on the host, which cannot follow GPU addresses; unset it"
    if device_type != "cuda" and not interpreted:
        return (f"Triton kernels need CUDA tensors, these are on {device_type} "
                "(TRITON_INTERPRET=1 runs them on CPU)")
    return None


def triton_unavailable(device: torch.device) -> str | None:
    return unavailable_reason(_IMPORT_ERROR, INTERPRETED, device.type)


def block_table(numels: Sequence[int], offsets: Sequence[int], block: int) -> torch.Tensor:
    """Rows (tensor, start, count, pos), one per block of ``block`` elements; int64, CPU. Pure.

    Tensor i is cut at multiples of ``block``; its last block holds the remainder and an empty
    tensor has no block. ``pos`` is where the block's first element goes in the flat buffer.
    """
    n = torch.tensor(list(numels), dtype=torch.int64)
    off = torch.tensor(list(offsets), dtype=torch.int64)
    per_tensor = (n + block - 1) // block
    tensor = torch.repeat_interleave(torch.arange(len(n)), per_tensor)
    first = torch.cumsum(per_tensor, 0) - per_tensor  # each tensor's first row
    start = (torch.arange(len(tensor)) - first[tensor]) * block
    count = torch.clamp(n[tensor] - start, max=block)
    return torch.stack([tensor, start, count, off[tensor] + start], dim=1).contiguous()


class BucketPacker:
    """Moves K tensors into (``pack``) and out of (``unpack``) slices of one flat ``buffer``.

    ``numels[i]`` elements of tensor i live at ``buffer[offsets[i]:offsets[i] + numels[i]]``.
    ``use_triton``: one launch per call; else one torch op per tensor (the oracle, and the CPU
    path). Both accept and reject the same inputs and produce identical bits. Work is queued on
    the current stream; calls on one packer must stay on one stream (they share its tables).
    """

    def __init__(self, numels: Sequence[int], offsets: Sequence[int], buffer: torch.Tensor, *,
                 use_triton: bool, block: int = BLOCK, num_warps: int = NUM_WARPS):
        if len(numels) != len(offsets):
            raise ValueError(f"{len(numels)} numels but {len(offsets)} offsets; give one of each per tensor")
        if buffer.dim() != 1 or not buffer.is_contiguous() or buffer.dtype not in DTYPES:
            raise ValueError(f"buffer must be a contiguous 1-D float32/bfloat16/float16 tensor, got "
                             f"{buffer.dtype} of shape {tuple(buffer.shape)}")
        for i, (n, o) in enumerate(zip(numels, offsets)):
            if n < 0 or o < 0 or o + n > buffer.numel():
                raise ValueError(f"slot {i} ({n} elements at {o}) is outside the buffer of {buffer.numel()}")
        self.numels = tuple(int(n) for n in numels)
        self.buffer = buffer
        self.use_triton = use_triton
        self.views = [buffer[o:o + n] for n, o in zip(self.numels, offsets)]
        if use_triton:
            self._init_triton(offsets, block, num_warps)

    def _init_triton(self, offsets: Sequence[int], block: int, num_warps: int) -> None:
        reason = triton_unavailable(self.buffer.device)
        if reason:
            raise RuntimeError(reason)
        if block < 16 or block & (block - 1):
            raise ValueError(f"block={block} must be a power of two >= 16")
        if self.buffer.data_ptr() % ALIGN:
            raise ValueError("buffer must start on a 16-byte boundary (a fresh torch.empty does); "
                             "the kernel's vector path assumes it")
        device = self.buffer.device
        self.block, self.num_warps = block, num_warps
        self._buf_vec = ALIGN // self.buffer.element_size()  # slot positions that are 16-byte aligned
        self._table = block_table(self.numels, offsets, block).to(device)
        self._addrs = torch.zeros(len(self.numels), dtype=torch.int64, device=device)
        self._last: list[int] | None = None
        if device.type == "cuda":
            # The addresses travel through pinned host memory with a non-blocking copy, so the
            # host never waits for the GPU. A pinned buffer must not be rewritten before the GPU
            # has read it: two of them alternate, each with an event recorded after its copy.
            # Reuse waits on the event from two calls back, long done unless the host runs more
            # than a whole step ahead of the GPU (then the host would be waiting anyway).
            self._pinned = [torch.empty(len(self.numels), dtype=torch.int64, pin_memory=True)
                            for _ in range(2)]
            self._events = [torch.cuda.Event() for _ in range(2)]
            self._turn = 0

    # ------------------------------------------------------------------ public
    def pack(self, sources: Sequence[torch.Tensor | None], scale: float = 1.0) -> None:
        """buffer slot i <- sources[i] * scale, cast to the buffer dtype; None fills the slot with 0."""
        dtype, addrs = self._check(sources, "source", allow_none=True)
        if not self.use_triton:
            for src, view in zip(sources, self.views):
                if src is None:
                    view.zero_()
                else:
                    torch.mul(_fp32(src.view(-1)), scale, out=view)
            return
        self._launch(dtype, addrs, scale, pack=True)

    def unpack(self, destinations: Sequence[torch.Tensor], scale: float = 1.0) -> None:
        """destinations[i] <- buffer slot i * scale, cast to the destination's dtype."""
        dtype, addrs = self._check(destinations, "destination", allow_none=False)
        if not self.use_triton:
            for dst, view in zip(destinations, self.views):
                torch.mul(_fp32(view), scale, out=dst.view(-1))
            return
        self._launch(dtype, addrs, scale, pack=False)

    # ------------------------------------------------------------------ internals
    def _check(self, tensors, what: str, allow_none: bool) -> tuple[torch.dtype, list[int]]:
        """Everything the kernel trusts blindly: a wrong size or device would be a wild access."""
        if len(tensors) != len(self.numels):
            raise ValueError(f"{len(tensors)} {what}s for {len(self.numels)} slots; pass one per slot")
        device, dtype, addrs = self.buffer.device, None, []
        for i, (t, n) in enumerate(zip(tensors, self.numels)):
            if t is None:
                if not allow_none:
                    raise ValueError(f"{what} {i} is None; only pack() takes None (a zero-filled slot)")
                addrs.append(0)
                continue
            if t.device != device:
                raise ValueError(f"{what} {i} is on {t.device}, the buffer on {device}")
            if t.numel() != n:
                raise ValueError(f"{what} {i} has {t.numel()} elements, its slot {n}")
            if not t.is_contiguous():
                raise ValueError(f"{what} {i} is not contiguous; pass t.contiguous()")
            if t.dtype != dtype:
                if dtype is not None:
                    raise ValueError(f"{what} {i} is {t.dtype}, earlier ones {dtype}; "
                                     "one call takes one dtype")
                if t.dtype not in DTYPES:
                    raise ValueError(f"{what} {i} is {t.dtype}; float32, bfloat16 and float16 are supported")
                dtype = t.dtype
            addrs.append(t.data_ptr())
        return dtype or torch.float32, addrs

    def _launch(self, dtype: torch.dtype, addrs: list[int], scale: float, pack: bool) -> None:
        if not len(self._table):
            return  # only empty tensors: nothing to move
        self._upload(addrs)
        _move_blocks[(len(self._table),)](
            self._table, self._addrs, self.buffer, float(scale),
            EXT=TL_DTYPES[dtype], PACK=pack, BUF_VEC=self._buf_vec, BLOCK=self.block,
            num_warps=self.num_warps,
            # No multiply-add to fuse; said explicitly so the bits never depend on the default.
            enable_fp_fusion=False,
        )

    def _upload(self, addrs: list[int]) -> None:
        if addrs == self._last:
            return  # the same addresses as last call (the caching allocator often reuses them)
        if self.buffer.device.type != "cuda":
            self._addrs.copy_(torch.tensor(addrs, dtype=torch.int64))  # interpreter: host memory
        else:
            self._turn ^= 1
            pinned, event = self._pinned[self._turn], self._events[self._turn]
            event.synchronize()  # host sync, almost always already complete (see _init_triton)
            pinned.numpy()[:] = addrs
            self._addrs.copy_(pinned, non_blocking=True)
            event.record()
        self._last = addrs


def _fp32(t: torch.Tensor) -> torch.Tensor:
    # The kernel's arithmetic: multiply in float32 whatever the input dtype, round once on output.
    return t if t.dtype == torch.float32 else t.float()
