#!/usr/bin/env python3
"""One-launch gradient packing against per-tensor copies and a plain device copy, in one run.

For each (tensor count K, buffer dtype), a bucket of K gradients (float32 by default) is scaled by
1/world and cast into one flat buffer three ways:
  (a) pack        BucketPacker.pack: one Triton launch for the bucket (comm.pack=triton);
  (b) per-tensor  one torch.mul(grad, 1/world, out=slot) per tensor, today's reducer (comm.pack=torch);
  (c) copy        buffer.copy_(other) of two uint8 tensors moving the same number of bytes.
Bandwidth counts bytes read + bytes written (1 GB = 1e9 bytes): the same figure for all three.
Calls alternate between two sets of source tensors, so the packer re-sends its address table
every call (the reducer's worst case: gradients at new addresses each step).

Sizes: ResNet-50's parameter sizes (torchvision layout), K drawn with a fixed seed, scaled by one
factor so the bucket holds about --mib MiB of sources and rounded to multiples of 64 elements
(channel counts are), plus --odd tiny tensors of odd size (a scalar gain, a 10-class bias) at
random places: after one of those, later slots are not 16-byte aligned and take the kernel's
scalar path. The "vector %" column is the share of elements on the 16-byte vector path.

Two times per method, each the median of --reps samples taken with CUDA events:
  * gpu:  the call is queued behind a sleep kernel, so the GPU runs it without waiting for the
          host: the device's own cost. The packing goal is stated on this one.
  * loop: back-to-back calls, no sleep: per call, host overhead included where it exceeds the
          GPU time (Python, validation and launch latency: K launches for per-tensor copies).

    python launch/bench_packing.py --tensors 100,400 --dtype fp32,bf16
    python launch/bench_packing.py --mib 25 --block 4096 --num-warps 8 --out packing.json

Needs a CUDA GPU. ``--interpret-smoke`` runs a tiny bucket on the CPU in Triton's interpreter with
wall-clock timing (a check of the script's plumbing: its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time

DTYPES = ("fp32", "bf16", "fp16")
METHODS = ("pack", "per_tensor", "copy")


def parse_args(argv=None):
    ints = lambda s: [int(v) for v in s.split(",")]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tensors", type=ints, default=[100, 400], help="tensors per bucket (K)")
    ap.add_argument("--dtype", type=_dtypes, default=["fp32", "bf16"], help="buffer (comm) dtypes")
    ap.add_argument("--src", choices=DTYPES, default="fp32", help="gradient (source) dtype")
    ap.add_argument("--mib", type=float, default=25.0, help="source MiB per bucket (DDP's default cap)")
    ap.add_argument("--odd", type=int, default=2, help="extra tiny tensors of odd size")
    ap.add_argument("--world", type=int, default=8, help="the scale is 1/world")
    ap.add_argument("--block", type=int, default=None, help="elements per Triton program")
    ap.add_argument("--num-warps", type=int, default=None)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--loop", type=int, default=10, help="calls per loop-mode sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write header and rows as JSON here")
    ap.add_argument("--interpret-smoke", action="store_true", help="tiny CPU run in Triton's interpreter")
    return ap.parse_args(argv)


def _dtypes(text: str) -> list[str]:
    values = text.split(",")
    bad = [v for v in values if v not in DTYPES]
    if bad:
        raise argparse.ArgumentTypeError(f"{','.join(bad)} not in {','.join(DTYPES)}")
    return values


def resnet50_numels() -> list[int]:
    """Parameter sizes of torchvision's ResNet-50 (161 tensors, 25.6 M elements), in order."""
    sizes = [64 * 3 * 7 * 7, 64, 64]
    cin = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            sizes += [cin * width, width, width, width * width * 9, width, width, width * 4 * width,
                      4 * width, 4 * width]
            if b == 0:
                sizes += [cin * 4 * width, 4 * width, 4 * width]  # the projection shortcut
            cin = 4 * width
    return sizes + [2048 * 1000, 1000]


def bucket_sizes(k: int, mib: float, odd: int, elsize: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    real = rng.choices(resnet50_numels(), k=k - odd)
    factor = mib * 2**20 / elsize / sum(real)
    sizes = [max(64, round(n * factor / 64) * 64) for n in real]
    for n in ([1, 10] * odd)[:odd]:
        sizes.insert(rng.randrange(len(sizes) + 1), n)
    return sizes


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.interpret_smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before ddtrain.kernels.packing imports Triton
        args.tensors, args.mib, args.reps, args.warmup, args.loop = [12], 0.01, 2, 1, 2
        args.block = args.block or 64
    import torch

    if not args.interpret_smoke and not torch.cuda.is_available():
        print("bench_packing: needs a CUDA GPU (none visible); run it on a GPU machine, or use "
              "--interpret-smoke to check the script on CPU", file=sys.stderr)
        return 2
    from ddtrain.kernels import packing

    device = torch.device("cpu" if args.interpret_smoke else "cuda")
    reason = packing.triton_unavailable(device)
    if reason:
        print(f"bench_packing: {reason}", file=sys.stderr)
        return 2

    header = describe(torch, device, argv)
    print("\n".join(header), flush=True)
    rows = [measure(torch, packing, device, k, buf, args) for k in args.tensors for buf in args.dtype]
    print()
    print(table(rows))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    return 0


def describe(torch, device, argv) -> list[str]:
    import triton

    cpu = f"cpu ({platform.processor() or platform.machine()})"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu
    command = "python launch/bench_packing.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    return [
        f"device: {name}",
        f"torch {torch.__version__}, triton {triton.__version__}",
        f"command: {command}",
        f"date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "GB/s = (bytes read + bytes written) / time, 1 GB = 1e9 B; gpu = device time (queued behind "
        "a sleep kernel), loop = back-to-back calls, host overhead included",
    ]


def measure(torch, packing, device, k: int, buf_name: str, args) -> dict:
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    src_dtype, buf_dtype = dtypes[args.src], dtypes[buf_name]
    src_size = torch.empty((), dtype=src_dtype).element_size()
    sizes = bucket_sizes(k, args.mib, args.odd, src_size, args.seed)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    total = sum(sizes)
    gen = torch.Generator().manual_seed(args.seed)
    # Two sets of sources, alternated between calls (see the module docstring).
    sets = [[torch.randn(n, generator=gen).to(device, src_dtype) for n in sizes] for _ in range(2)]
    buffer = torch.empty(total, dtype=buf_dtype, device=device)
    options = {key: v for key, v in (("block", args.block), ("num_warps", args.num_warps)) if v is not None}
    packer = packing.BucketPacker(sizes, offsets, buffer, use_triton=True, **options)
    views = [buffer[o:o + n] for n, o in zip(sizes, offsets)]
    moved = total * (src_size + buffer.element_size())
    copy_from = torch.empty(moved // 2, dtype=torch.uint8, device=device)
    copy_to = torch.empty_like(copy_from)
    scale = 1.0 / args.world

    def per_tensor(i):
        for src, view in zip(sets[i], views):
            torch.mul(src, scale, out=view)

    calls = {
        "pack": lambda i: packer.pack(sets[i], scale),
        "per_tensor": per_tensor,
        "copy": lambda i: copy_to.copy_(copy_from),
    }
    calls["pack"](0)
    packed = buffer.clone()
    per_tensor(0)
    block = packer.block
    row = dict(tensors=len(sizes), src=args.src, buf=buf_name, mb_moved=moved / 1e6,
               smallest=min(sizes), largest=max(sizes), block=block, num_warps=packer.num_warps,
               same_bits=bool(torch.equal(packed, buffer)),
               vector_pct=100 * vector_share(sizes, offsets, sets[0], buffer.element_size(), block))
    timer = Timer(torch, device, args)
    for name, fn in calls.items():
        gpu_s, loop_s = timer.median_seconds(fn)
        row[f"{name}_gpu_us"], row[f"{name}_loop_us"] = gpu_s * 1e6, loop_s * 1e6
        row[f"{name}_gpu_GBps"], row[f"{name}_loop_GBps"] = moved / gpu_s / 1e9, moved / loop_s / 1e9
    for mode in ("gpu", "loop"):
        row[f"{mode}_pack_vs_copy"] = row[f"pack_{mode}_GBps"] / row[f"copy_{mode}_GBps"]
        row[f"{mode}_pack_vs_per_tensor"] = row[f"per_tensor_{mode}_us"] / row[f"pack_{mode}_us"]
    print(f"  K={row['tensors']} {args.src}->{buf_name}: pack {row['pack_gpu_GBps']:.1f} GB/s, "
          f"{row['gpu_pack_vs_copy']:.2f} x copy, {row['gpu_pack_vs_per_tensor']:.2f} x per-tensor",
          flush=True)
    return row


def vector_share(sizes, offsets, sources, buf_elsize: int, block: int) -> float:
    """Share of elements in whole blocks whose tensor and slot are 16-byte aligned (the kernel's
    vector branch; everything else takes its masked scalar branch)."""
    vec = 16 // buf_elsize
    fast = sum((n // block) * block for n, o, s in zip(sizes, offsets, sources)
               if o % vec == 0 and s.data_ptr() % 16 == 0)
    return fast / sum(sizes)


class Timer:
    def __init__(self, torch, device, args):
        self.torch, self.cuda, self.args = torch, device.type == "cuda", args
        if self.cuda:
            # Cycles per second of torch.cuda._sleep, so a sleep can be sized in seconds.
            start, end = self._events()
            start.record()
            torch.cuda._sleep(10_000_000)
            end.record()
            end.synchronize()
            self.cycles_per_s = 10_000_000 / (start.elapsed_time(end) / 1e3)

    def _events(self):
        return self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)

    def median_seconds(self, fn) -> tuple[float, float]:
        """(gpu, loop) seconds per call."""
        host = 0.0
        for i in range(self.args.warmup + 1):
            t0 = time.perf_counter()
            fn(i % 2)
            host = max(host, time.perf_counter() - t0)
        gpu, loop = [], []
        for rep in range(self.args.reps):
            gpu.append(self._gpu_sample(fn, rep % 2, host))
            loop.append(self._loop_sample(fn))
        return statistics.median(gpu), statistics.median(loop)

    def _gpu_sample(self, fn, i: int, host_s: float) -> float:
        if not self.cuda:
            t0 = time.perf_counter()
            fn(i)
            return time.perf_counter() - t0
        start, end = self._events()
        # The GPU sleeps while the host enqueues the call: twice the host's time, plus margin.
        self.torch.cuda._sleep(int(self.cycles_per_s * (2 * host_s + 50e-6)))
        start.record()
        fn(i)
        end.record()
        end.synchronize()  # the one host sync per sample, on purpose
        return start.elapsed_time(end) / 1e3

    def _loop_sample(self, fn) -> float:
        n = self.args.loop
        if not self.cuda:
            t0 = time.perf_counter()
            for i in range(n):
                fn(i % 2)
            return (time.perf_counter() - t0) / n
        self.torch.cuda.synchronize()  # start from an idle GPU
        start, end = self._events()
        start.record()
        for i in range(n):
            fn(i % 2)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / n


COLUMNS = [
    ("tensors", "{}"), ("src", "{}"), ("buf", "{}"), ("mb_moved", "{:.2f}"), ("vector_pct", "{:.0f}"),
    ("same_bits", "{}"),
    ("pack_gpu_GBps", "{:.1f}"), ("per_tensor_gpu_GBps", "{:.1f}"), ("copy_gpu_GBps", "{:.1f}"),
    ("gpu_pack_vs_copy", "{:.2f}"), ("gpu_pack_vs_per_tensor", "{:.2f}"),
    ("pack_loop_GBps", "{:.1f}"), ("per_tensor_loop_GBps", "{:.1f}"), ("copy_loop_GBps", "{:.1f}"),
    ("loop_pack_vs_copy", "{:.2f}"), ("loop_pack_vs_per_tensor", "{:.2f}"),
]


def table(rows) -> str:
    """Markdown. *_vs_copy: pack GB/s / copy GB/s (goal >= 0.8); *_vs_per_tensor: per-tensor time /
    pack time (goal >= 2)."""
    lines = ["| " + " | ".join(k for k, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(f.format(r[k]) for k, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
