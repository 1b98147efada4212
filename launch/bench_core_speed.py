"""How steady is each core's speed? A check to run before comparing a model with measurements.

One thread, pinned to one core at a time, times a small fp32 matmul back to back for a while
and reports the core's speed (GFLOP/s) as a median and p10/p90, the spread between them, the
longest spell spent well below the core's best, and the time the hypervisor stole from it
(``/proc/stat``). On a virtual machine whose vCPUs share physical cores with other tenants,
speed can switch between two levels for seconds at a time with no steal recorded: every timed
run then lands on one level or the other, and the spread is the least error a model can be
checked to on that machine.

    python launch/bench_core_speed.py --seconds 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ddtrain.scaling.spread import percentile  # noqa: E402

SLOW = 0.8  # a sample below this fraction of the core's p90 speed counts as slow


def steal_s(cpu: int) -> float:
    """Seconds of ``cpu``'s time stolen by the hypervisor since boot."""
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields[0] == f"cpu{cpu}":
            return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    return 0.0


def sample(cpu: int, seconds: float, size: int) -> tuple[list[tuple[float, float]], float]:
    """(time, GFLOP/s) samples of ``cpu`` for ``seconds``, and the steal over them."""
    os.sched_setaffinity(0, {cpu})
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    flops = 2 * size**3 * 4
    stolen = steal_s(cpu)
    out = []
    end = time.perf_counter() + seconds
    while (t := time.perf_counter()) < end:
        for _ in range(4):
            a @ b
        out.append((t, flops / (time.perf_counter() - t) / 1e9))
    return out, steal_s(cpu) - stolen


def longest_slow_spell(samples: list[tuple[float, float]], threshold: float) -> float:
    longest, start = 0.0, None
    for t, speed in samples:
        if speed < threshold:
            start = t if start is None else start
            longest = max(longest, t - start)
        else:
            start = None
    return longest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="per core and round (default: 20)")
    p.add_argument("--rounds", type=int, default=2, help="rounds over the cores, interleaved (default: 2)")
    p.add_argument("--size", type=int, default=384, help="matmul size (default: 384)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cpus = sorted(os.sched_getaffinity(0))
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: {len(cpus)} core(s), {args.rounds} x "
          f"{args.seconds:g} s each, fp32 matmul {args.size}, 1 thread, torch {torch.__version__}")
    print("| core | round | samples | median GFLOP/s | p10 | p90 | (p90-p10)/median | "
          "slow share | longest slow spell (s) | stolen (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    spreads, medians = [], []
    for r in range(args.rounds):
        for cpu in cpus if r % 2 == 0 else cpus[::-1]:
            samples, stolen = sample(cpu, args.seconds, args.size)
            speeds = [s for _, s in samples]
            med, p10, p90 = statistics.median(speeds), percentile(speeds, 10), percentile(speeds, 90)
            slow = [s for s in speeds if s < SLOW * p90]
            spreads.append((p90 - p10) / med)
            medians.append(med)
            spell = longest_slow_spell(samples, SLOW * p90)
            print(f"| {cpu} | {r + 1} | {len(speeds)} | {med:.1f} | {p10:.1f} | {p90:.1f} | "
                  f"{spreads[-1]:.0%} | {len(slow) / len(speeds):.0%} | {spell:.1f} | {stolen:.2f} |")
    print(f"largest p10-p90 spread of one core's speed: {max(spreads):.0%} of its median; a timed run "
          "shorter than the slow spells above can land anywhere in it")
    low, high = min(medians), max(medians)
    moved = (high - low) / statistics.median(medians)
    print(f"the rows' medians: {low:.1f} to {high:.1f} GFLOP/s ({moved:.0%} of their median): how far "
          "the same work moves between runs a minute apart")
    return 0


if __name__ == "__main__":
    sys.exit(main())
