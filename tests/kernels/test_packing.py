"""One-launch gradient packing (ddtrain/kernels/packing.py): the Triton kernel against the torch path.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports it); on the device machine the same tests run the
compiled kernel on CUDA tensors. The interpreter runs programs one by one in Python, so the
buckets here are small (110 tensors, ~130 blocks) and BLOCK is 256, which still gives
tensors of one element, of a few blocks, and of a non-multiple of BLOCK.

Equality is exact everywhere: both paths compute one float32 multiply (IEEE, correctly rounded)
and one rounding to nearest-even into the target dtype, element by element, with no sum whose
order could differ.
"""

from __future__ import annotations

import random

import pytest
import torch

from ddtrain.comm.packing import choose_packing
from ddtrain.kernels import packing
from ddtrain.kernels.packing import BucketPacker, block_table, unavailable_reason

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BLOCK = 256
needs_triton = pytest.mark.skipif(packing.triton_unavailable(DEVICE) is not None,
                                  reason=str(packing.triton_unavailable(DEVICE)))


@pytest.fixture
def gen() -> torch.Generator:
    """Fresh inputs each run; a failing test's captured output shows the seed to replay it."""
    seed = random.SystemRandom().randrange(2**31)
    print(f"seed {seed}")
    return torch.Generator().manual_seed(seed)


def mixed_sizes(gen: torch.Generator, count: int = 110) -> list[int]:
    """Tiny, around BLOCK, a few blocks long, and random: what a model's parameter list holds."""
    fixed = [1, 1, 2, 3, 7, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK, 3 * BLOCK + 5, 1000]
    rand = torch.randint(1, 160, (count - len(fixed),), generator=gen).tolist()
    sizes = fixed + rand
    order = torch.randperm(len(sizes), generator=gen).tolist()
    return [sizes[i] for i in order]


def layout(gen: torch.Generator, sizes: list[int]) -> tuple[list[int], int]:
    """Offsets with slots packed back to back (unaligned after an odd size) or moved to the next
    multiple of 8 elements, leaving a gap: both kernel branches, and a check that gaps stay put.
    The largest slot is always aligned, so the vector branch surely runs."""
    offsets, end = [], 0
    for n in sizes:
        if n == max(sizes) or torch.rand((), generator=gen) < 0.5:
            end = -(-end // 8) * 8 + 8  # aligned, with at least 8 untouched elements before it
        offsets.append(end)
        end += n
    return offsets, end


def random_tensors(gen, sizes, dtype) -> list[torch.Tensor]:
    """Never zero; a few are views starting one element into an allocation (unaligned addresses),
    never the largest (see ``layout``)."""
    out = []
    for i, n in enumerate(sizes):
        x = torch.randn(n + 1, generator=gen) * 10 ** torch.empty(n + 1).uniform_(-3, 3, generator=gen)
        x = x.to(DEVICE, dtype)  # then sliced, so that the offset views stay offset on a GPU too
        out.append(x[1:] if i % 5 == 0 and n != max(sizes) else x[:n])
    return out


def with_sentinels(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((n,), 12345.0, dtype=dtype, device=DEVICE)


def gaps(buffer: torch.Tensor, sizes, offsets) -> torch.Tensor:
    inside = torch.zeros(buffer.numel(), dtype=torch.bool, device=buffer.device)
    for n, o in zip(sizes, offsets):
        inside[o:o + n] = True
    return buffer[~inside]


# --------------------------------------------------------------------------- pure parts
def test_block_table_covers_every_element_exactly_once(gen):
    sizes = mixed_sizes(gen, 40) + [0, 0]
    offsets, _ = layout(gen, sizes)
    rows = block_table(sizes, offsets, BLOCK).tolist()
    assert len(rows) == sum(-(-n // BLOCK) for n in sizes)
    seen = [[] for _ in sizes]
    for tensor, start, count, pos in rows:
        assert start % BLOCK == 0 and 1 <= count <= BLOCK
        assert pos == offsets[tensor] + start
        seen[tensor] += range(start, start + count)
    assert seen == [list(range(n)) for n in sizes]


def test_unavailable_reasons_name_the_fix():
    assert unavailable_reason("", interpreted=False, device_type="cuda") is None
    assert unavailable_reason("", interpreted=True, device_type="cpu") is None
    assert "pip install triton" in unavailable_reason("ImportError: no triton", False, "cuda")
    assert "TRITON_INTERPRET=1" in unavailable_reason("", interpreted=False, device_type="cpu")
    assert "unset it" in unavailable_reason("", interpreted=True, device_type="cuda")


# --------------------------------------------------------------------------- kernel vs torch
CASTS = [
    (torch.float32, torch.float32),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
    (torch.bfloat16, torch.float32),
]


@needs_triton
@pytest.mark.parametrize("src_dtype, buf_dtype", CASTS, ids=lambda d: str(d).removeprefix("torch."))
def test_pack_and_unpack_match_the_torch_path_bit_for_bit(gen, src_dtype, buf_dtype):
    sizes = mixed_sizes(gen)
    offsets, total = layout(gen, sizes)
    sources = random_tensors(gen, sizes, src_dtype)
    scale = 1.0 / 3  # a 3-rank average: not a power of two, so every product is rounded

    expected, got = with_sentinels(total, buf_dtype), with_sentinels(total, buf_dtype)
    BucketPacker(sizes, offsets, expected, use_triton=False).pack(sources, scale)
    packer = BucketPacker(sizes, offsets, got, use_triton=True, block=BLOCK)
    packer.pack(sources, scale)
    assert torch.equal(got, expected)
    assert (gaps(got, sizes, offsets) == 12345.0).all()  # nothing written between slots
    # The torch path itself is the plain formula: float32 product, one rounding.
    for src, n, o in zip(sources, sizes, offsets):
        assert torch.equal(expected[o:o + n], (src.float() * scale).to(buf_dtype))

    # Back into tensors of the source dtype, with a scale of its own.
    ref_out = [torch.full_like(s, 7.0) for s in sources]
    out = [torch.full_like(s, 7.0) for s in sources]
    BucketPacker(sizes, offsets, expected, use_triton=False).unpack(ref_out, scale=3.0)
    packer.unpack(out, scale=3.0)
    for i, (a, b) in enumerate(zip(out, ref_out)):
        assert torch.equal(a, b), f"tensor {i} ({sizes[i]} elements)"
        assert torch.equal(b, (expected[offsets[i]:offsets[i] + sizes[i]].float() * 3.0).to(src_dtype))


@needs_triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN * 1 in numpy
def test_bf16_rounding_is_nearest_even_including_ties_overflow_and_nan():
    # Low 16 bits exactly 0x8000 are ties: even mantissas stay, odd ones round up. A truncating
    # conversion (the interpreter's own) gets half of these wrong.
    bits = torch.tensor([0x3F808000, 0x3F818000, 0xBF808000, 0xBF818000, 0x3F80FFFF, 0x3F807FFF,
                         0x7F7FFFFF, 0xFF7FFFFF, 0x00000001, 0x80008000, 0x7F800000, 0x7FC00001,
                         0x7F800001], dtype=torch.int64).to(torch.int32)
    x = bits.view(torch.float32).to(DEVICE)
    buf = torch.empty(len(x), dtype=torch.bfloat16, device=DEVICE)
    BucketPacker([len(x)], [0], buf, use_triton=True, block=16).pack([x], 1.0)
    expected = x.to(torch.bfloat16)
    finite = ~x.isnan()
    assert torch.equal(buf[finite].view(torch.int16), expected[finite].view(torch.int16))
    assert buf[~finite].isnan().all()  # NaN stays NaN (a carry must not turn it into inf)


@needs_triton
def test_a_missing_source_fills_its_slot_with_zeros(gen):
    sizes = mixed_sizes(gen, 20)
    offsets, total = layout(gen, sizes)
    sources = random_tensors(gen, sizes, torch.float32)
    missing = [0, 7, 19]
    given = [None if i in missing else s for i, s in enumerate(sources)]
    for use_triton in (False, True):
        buf = with_sentinels(total, torch.float32)
        BucketPacker(sizes, offsets, buf, use_triton=use_triton, block=BLOCK).pack(given, 0.5)
        for i, (s, n, o) in enumerate(zip(sources, sizes, offsets)):
            want = torch.zeros(n, device=DEVICE) if i in missing else s * 0.5
            assert torch.equal(buf[o:o + n], want), f"use_triton={use_triton}, slot {i}"


@needs_triton
def test_each_call_reads_the_tensors_it_is_given(gen):
    """The address table is re-sent when addresses change, and reused (not stale) when not."""
    sizes = [5, BLOCK + 3, 1]
    packer = BucketPacker(sizes, [0, 5, BLOCK + 8], buf := torch.empty(BLOCK + 9, device=DEVICE),
                          use_triton=True, block=BLOCK)
    for _ in range(2):
        sources = random_tensors(gen, sizes, torch.float32)  # new allocations
        packer.pack(sources, 1.0)
        assert torch.equal(buf, torch.cat(sources))
        for s in sources:
            s.mul_(-2.0)  # same addresses, new values
        packer.pack(sources, 1.0)
        assert torch.equal(buf, torch.cat(sources))


# --------------------------------------------------------------------------- errors
def one_line_error(fn, *words) -> None:
    with pytest.raises(ValueError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize("use_triton", [pytest.param(True, marks=needs_triton), False])
def test_bad_inputs_are_refused_with_one_line(use_triton):
    buf = torch.empty(20, device=DEVICE)
    packer = BucketPacker([4, 6], [0, 8], buf, use_triton=use_triton, block=BLOCK)
    a, b = torch.randn(4, device=DEVICE), torch.randn(6, device=DEVICE)
    one_line_error(lambda: packer.pack([a]), "1 sources for 2 slots")
    one_line_error(lambda: packer.pack([a, torch.randn(7, device=DEVICE)]), "source 1", "7 elements", "6")
    one_line_error(lambda: packer.pack([a, torch.randn(12, device=DEVICE)[::2]]), "source 1", "contiguous")
    one_line_error(lambda: packer.pack([a, b.half()]), "source 1", "float16", "one dtype")
    one_line_error(lambda: packer.pack([a.double(), b]), "source 0", "float64", "supported")
    one_line_error(lambda: packer.pack([a, torch.empty(6, device="meta")]), "source 1", "meta")
    one_line_error(lambda: packer.unpack([a, None]), "destination 1 is None")


def test_bad_layouts_are_refused_with_one_line():
    buf = torch.empty(20)
    one_line_error(lambda: BucketPacker([4], [0, 4], buf, use_triton=False), "1 numels but 2 offsets")
    one_line_error(lambda: BucketPacker([4], [18], buf, use_triton=False), "slot 0", "outside")
    one_line_error(lambda: BucketPacker([4], [0], buf.view(4, 5), use_triton=False), "1-D")
    one_line_error(lambda: BucketPacker([4], [0], buf.long(), use_triton=False), "int64")


@needs_triton
def test_triton_layout_limits_are_refused_with_one_line():
    buf = torch.empty(20, device=DEVICE)
    one_line_error(lambda: BucketPacker([4], [0], buf, use_triton=True, block=100),
                   "block=100", "power of two")
    one_line_error(lambda: BucketPacker([4], [0], buf[1:], use_triton=True), "16-byte")


# --------------------------------------------------------------------------- the reducer's choice
def test_reducer_packing_choice():
    cpu = torch.device("cpu")
    assert choose_packing("torch", cpu, {torch.float32})[0] == "torch"
    kind, why = choose_packing("auto", cpu, {torch.float32})
    assert kind == "torch" and "cpu" in why
    one_line_error(lambda: choose_packing("fast", cpu, {torch.float32}), "'fast'", "auto, triton, torch")


@needs_triton
def test_reducer_packing_triton_needs_one_parameter_dtype():
    assert choose_packing("triton", DEVICE, {torch.float32})[0] == "triton"
    one_line_error(lambda: choose_packing("triton", DEVICE, {torch.float32, torch.bfloat16}),
                   "comm.pack=triton", "bfloat16, float32")
