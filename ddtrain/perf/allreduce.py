"""All-reduce microbenchmark: time vs. message size, and the alpha-beta fit behind the scaling model.

    mpirun -np 2 python -m ddtrain.perf.allreduce --max-bytes 256M --out ar.json

Bandwidths follow nccl-tests (docs/PERFORMANCE.md there): algbw = size / time, and busbw =
algbw * 2(n-1)/n, the rate each link carries in a ring all-reduce, which is comparable across
world sizes and with the hardware's link speed.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import socket
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ddtrain.dist.env import LaunchEnvError, detect_launch_env
from ddtrain.dist.group import DistContext, init_distributed, shutdown
from ddtrain.errors import fail
from ddtrain.metrics import json_safe  # JSON has no inf/nan (an unbounded or unfitted B)
from ddtrain.run import cpu_threads

NEEDS_RANKS = "all-reduce benchmark needs >= 2 ranks; run it under mpirun -np N"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class AllReduceRow:
    size_bytes: int
    time_s: float  # median over iterations of the slowest rank's time
    algbw_GBps: float
    busbw_GBps: float
    iters: int
    # CPU seconds per all-reduce (every thread of the process, user and kernel), the busiest
    # rank's: on a node with no spare core, compute loses at least this much.
    cpu_s: float | None = None
    # The share of a core's compute lost while this all-reduce is in flight beside it, the
    # busiest rank's (CPU only; None where not measured): over a slow link more than its CPU
    # time, as its threads wake for every message, preempt the compute and evict its caches.
    compute_lost: float | None = None
    # The wall time of one all-reduce with that compute running beside it on the same core, the
    # busiest rank's median (CPU only): its threads get a share of the core, so it runs longer.
    beside_s: float | None = None


def busbw(algbw: float, n: int) -> float:
    """Bus bandwidth of an all-reduce over n ranks; 0 for n=1, where nothing crosses a link."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1 (the number of ranks)")
    return algbw * 2 * (n - 1) / n


def sweep_sizes(min_bytes: int = 1024, max_bytes: int = 256 << 20, factor: int = 2) -> list[int]:
    """min_bytes, min_bytes*factor, ... up to max_bytes inclusive, as multiples of 4 bytes."""
    if min_bytes < 4:
        raise ValueError(f"min_bytes={min_bytes} must be >= 4 (one fp32 element); use e.g. 1K")
    if max_bytes < min_bytes:
        raise ValueError(f"max_bytes={max_bytes} must be >= min_bytes={min_bytes}; raise max_bytes")
    if factor < 2:
        raise ValueError(f"factor={factor} must be an integer >= 2; use e.g. 2")
    sizes, s = [], min_bytes
    while s <= max_bytes:
        sizes.append(s)
        s *= factor
    if sizes[-1] != max_bytes:  # inclusive: the largest size is the one asked for
        sizes.append(max_bytes)
    return sorted({max(4, 4 * round(s / 4)) for s in sizes})


def _timed_all_reduce(buf: torch.Tensor) -> float:
    # Deliberately synchronous: we want the latency of one collective, not the throughput of a
    # queue of them, so the GPU is drained before the clock starts and before it stops.
    cuda = buf.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(buf.device)
    t0 = time.perf_counter()
    dist.all_reduce(buf)
    if cuda:
        torch.cuda.synchronize(buf.device)
    return time.perf_counter() - t0


def _matmul_stream(device: torch.device) -> Callable[[], None]:
    """One small unit of compute: a 128 x 128 matmul, short beside any all-reduce timed here."""
    a = torch.randn(128, 128, device=device)
    b = torch.empty_like(a)
    return lambda: torch.mm(a, a, out=b)


def _rate(unit: Callable[[], None], seconds: float) -> float:
    """Units of compute per second, run alone for about ``seconds``."""
    done, t0 = 0, time.perf_counter()
    while (wall := time.perf_counter() - t0) < seconds:
        unit()
        done += 1
    return done / wall


def _lost_beside(buf: torch.Tensor, unit: Callable[[], None], rate: float) -> tuple[float, float]:
    """(the share of ``rate`` lost while one all-reduce of ``buf`` is in flight, the seconds it
    was in flight): units run until the collective completes, and count against its time."""
    done, t0 = 0, time.perf_counter()
    work = dist.all_reduce(buf, async_op=True)
    while not work.is_completed():
        unit()
        done += 1
    work.wait()
    wall = time.perf_counter() - t0
    return max(0.0, 1.0 - done / rate / wall), wall


def run_sweep(ctx: DistContext, sizes: Sequence[int], *, dtype: torch.dtype = torch.float32, warmup: int = 2,
              min_iters: int = 3, max_iters: int = 50, budget_s: float = 0.5,
              on_row: Callable[[AllReduceRow], None] | None = None) -> list[AllReduceRow]:
    """Time a SUM all-reduce of each size; every rank returns the same rows."""
    if ctx.backend is None:
        raise ValueError(NEEDS_RANKS)
    if warmup < 1 or not 1 <= min_iters <= max_iters or budget_s <= 0:
        raise ValueError(f"warmup={warmup}, min_iters={min_iters}, max_iters={max_iters}, budget_s="
                         f"{budget_s}: need warmup >= 1, 1 <= min_iters <= max_iters and budget_s > 0")
    # Host float64 reductions go where the backend can reduce them (NCCL: only device tensors).
    coll = ctx.device if ctx.backend == "nccl" else torch.device("cpu")
    # Where CPU workers share cores with their collectives, how much compute an all-reduce in
    # flight costs decides how much of it hides (a GPU computes on its own engine).
    unit = _matmul_stream(ctx.device) if ctx.device.type == "cpu" else None

    rows = []
    for size in sizes:
        # Zeros stay zeros under SUM: no overflow to inf (fp16) or denormals to slow the CPU.
        buf = torch.zeros(size // dtype.itemsize, dtype=dtype, device=ctx.device)
        # The fastest warm-up is the estimate: the first call also pays one-time setup costs.
        per_iter = min(_timed_all_reduce(buf) for _ in range(warmup))
        # Every rank must run the same number of collectives or the job deadlocks, so the count
        # comes from the slowest rank's estimate, which all ranks receive.
        est = torch.tensor([per_iter], dtype=torch.float64, device=coll)
        dist.all_reduce(est, op=dist.ReduceOp.MAX)
        iters = int(min(max_iters, max(min_iters, budget_s // max(est.item(), 1e-9))))
        cpu0 = time.process_time()
        times = torch.tensor([_timed_all_reduce(buf) for _ in range(iters)], dtype=torch.float64, device=coll)
        cpu = torch.tensor([(time.process_time() - cpu0) / iters], dtype=torch.float64, device=coll)
        # An iteration ends when its slowest rank does: one MAX reduction after the loop, so
        # the timed loop holds nothing but the collectives themselves.
        dist.all_reduce(times, op=dist.ReduceOp.MAX)
        dist.all_reduce(cpu, op=dist.ReduceOp.MAX)
        t = statistics.median(times.tolist())
        lost = beside = None
        if unit is not None:
            # The rate alone is taken just before, against drift; every rank runs the same
            # number of collectives (the agreed iters), whatever its own timing.
            rate = _rate(unit, min(0.05, budget_s / 4))
            pairs = [_lost_beside(buf, unit, rate) for _ in range(iters)]
            medians = torch.tensor([statistics.median(x) for x in zip(*pairs)], dtype=torch.float64,
                                   device=coll)
            dist.all_reduce(medians, op=dist.ReduceOp.MAX)
            lost, beside = medians.tolist()
        row = AllReduceRow(size, t, size / t / 1e9, busbw(size / t / 1e9, ctx.world_size), iters, cpu.item(),
                           lost, beside)
        rows.append(row)
        del buf  # free the 256 MiB buffer before the next size allocates its own
        if on_row is not None:
            on_row(row)
    return rows


def fit_alpha_beta(rows: Sequence[AllReduceRow], n: int) -> tuple[float, float]:
    """(alpha in s, B in bytes/s) of the Hockney model t = alpha + 2(n-1)/n * size / B.

    Fitted in relative error, sum((pred/t - 1)^2): a plain least-squares fit would let the
    largest messages (seconds) drown the smallest (microseconds), which are what pin alpha.
    """
    if len(rows) < 2 or len({r.size_bytes for r in rows}) < 2:
        raise ValueError(f"fit needs rows of >= 2 distinct sizes, got {len(rows)} row(s); sweep more sizes")
    if n < 2:
        raise ValueError(f"n={n} must be >= 2: one rank moves no bytes, so there is no bandwidth to fit")
    t = np.array([r.time_s for r in rows])
    x = np.array([r.size_bytes for r in rows]) * 2 * (n - 1) / n  # bytes over each rank's link
    # Linear in (alpha, g = 1/B); dividing each equation by t makes the residual relative.
    (alpha, g), *_ = np.linalg.lstsq(np.stack([1 / t, x / t], axis=1), np.ones_like(t), rcond=None)
    if alpha < 0:  # latency below resolution: refit bandwidth alone through the origin
        alpha, g = 0.0, float(np.sum(x / t) / np.sum((x / t) ** 2))
    if g <= 0:  # time does not grow with size over these rows: bandwidth unbounded here
        return float(np.sum(1 / t) / np.sum(1 / t**2)), math.inf
    return float(alpha), float(1 / g)


def human_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.4g} {unit}"
    return f"{n} B"


def format_table(rows: Sequence[AllReduceRow]) -> str:
    lines = ["| size | time (us) | cpu (us) | compute lost beside it | time beside compute (us) "
             "| algbw (GB/s) | busbw (GB/s) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {human_bytes(r.size_bytes)} | {r.time_s * 1e6:.1f} | "
              f"{'-' if r.cpu_s is None else f'{r.cpu_s * 1e6:.1f}'} | "
              f"{'-' if r.compute_lost is None else f'{r.compute_lost:.0%}'} | "
              f"{'-' if r.beside_s is None else f'{r.beside_s * 1e6:.1f}'} | {r.algbw_GBps:.3f} | "
              f"{r.busbw_GBps:.3f} |" for r in rows]
    return "\n".join(lines)


def to_json(rows, *, n: int, backend: str, device, alpha: float, bus_bw: float) -> dict:
    return {
        "benchmark": "all_reduce", "n": n, "backend": backend, "device": str(device),
        "rows": [asdict(r) for r in rows],
        "fit": {"model": "t = alpha + 2(n-1)/n * size / B", "alpha_s": json_safe(alpha),
                "bus_bw_GBps": json_safe(bus_bw / 1e9)},
    }


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not m:
        raise ValueError(f"{text!r} is not a size; use bytes with an optional K/M/G suffix, e.g. 256M")
    return int(m.group(1)) << (10 * " KMG".index(m.group(2).upper() or " "))


def main(argv: Sequence[str] | None = None) -> None:
    try:
        env = detect_launch_env(os.environ)
    except LaunchEnvError as e:
        fail(str(e))

    class Parser(argparse.ArgumentParser):
        def error(self, message):  # one line from rank 0, not usage text from every rank
            fail(message, env.rank)

    p = Parser(prog="python -m ddtrain.perf.allreduce", description=__doc__.splitlines()[0])
    p.add_argument("--min-bytes", default="1K")
    p.add_argument("--max-bytes", default="256M")
    p.add_argument("--factor", type=int, default=2)
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", type=Path, default=None, help="write rows, fit and metadata here (JSON)")
    p.add_argument("--budget-s", type=float, default=0.5, help="target seconds of timing per size")
    args = p.parse_args(argv)
    try:
        sizes = sweep_sizes(parse_size(args.min_bytes), parse_size(args.max_bytes), args.factor)
    except ValueError as e:
        fail(f"{e} (from --min-bytes {args.min_bytes} --max-bytes {args.max_bytes} --factor {args.factor})",
             env.rank)
    if not args.budget_s > 0:
        fail(f"--budget-s {args.budget_s} must be > 0; use e.g. 0.5", env.rank)
    if env.world_size < 2:
        fail(NEEDS_RANKS)
    if args.device == "cuda" and not torch.cuda.is_available():
        fail("--device cuda but no CUDA device is visible; use --device cpu", env.rank)
    if args.backend == "nccl" and (args.device == "cpu" or not torch.cuda.is_available()):
        fail("--backend nccl needs CUDA devices; use --backend gloo on CPU", env.rank)

    torch.set_num_threads(cpu_threads(0, env.local_world_size))  # ranks on a node share its cores
    ctx = init_distributed(env, backend=args.backend, device=args.device, timeout_s=120)
    say = print if ctx.is_main else (lambda *a, **k: None)  # rank 0 speaks for the job
    try:
        say(f"all_reduce: backend {ctx.backend}, {ctx.world_size} ranks via {env.launcher}, device "
            f"{ctx.device}, dtype {args.dtype}, {len(sizes)} sizes", flush=True)
        progress = lambda r: say(f"  {human_bytes(r.size_bytes):>9}  {r.iters:3d} iters  "
                                 f"{r.time_s * 1e6:10.1f} us  busbw {r.busbw_GBps:8.3f} GB/s", flush=True)
        rows = run_sweep(ctx, sizes, dtype=DTYPES[args.dtype], budget_s=args.budget_s, on_row=progress)
    finally:
        shutdown(ctx)
    alpha, bus_bw = fit_alpha_beta(rows, ctx.world_size) if len(rows) > 1 else (math.nan, math.nan)
    say(format_table(rows))
    say(f"fit t = alpha + 2(n-1)/n * size / B: alpha {alpha * 1e6:.1f} us, B {bus_bw / 1e9:.3f} GB/s")
    if ctx.is_main and args.out is not None:
        doc = to_json(rows, n=ctx.world_size, backend=ctx.backend, device=ctx.device, alpha=alpha,
                      bus_bw=bus_bw)
        doc.update(dtype=args.dtype, hostname=socket.gethostname(), torch=torch.__version__,
                   date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
