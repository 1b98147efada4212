#!/usr/bin/env python3
"""trainer.compile=true against the eager model, side by side, at 1 and 2 ranks on this machine.

Runs alternate (eager, compiled, compiled, eager, ...) so drift in machine load hits both alike;
each is a real ``mpirun -np N ddtrain ...`` with ddtrain's reducer (launch/bench_engines.py's
runner). The first ``--warmup`` steps, the compiling one among them, are left out. Prints a
markdown table with the step-time ratio compiled / eager (below 1.0: compiling pays).

    python launch/bench_compile.py --models gpt --repeats 2
    python launch/bench_compile.py --np 1 2 --models convnet gpt -- data.batch_size=64
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from bench_engines import one_run

VARIANTS = {"eager": [], "compiled": ["trainer.compile=true"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--np", type=int, nargs="+", default=[1, 2], help="rank counts (mpirun -np)")
    ap.add_argument("--models", nargs="+", default=["gpt"])
    ap.add_argument("--repeats", type=int, default=2, help="runs per variant, alternating")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10, help="leading steps left out of the timing")
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("extra", nargs="*", help="Hydra overrides for both variants (after --)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddtrain-bench-") as tmp:
        workdir = Path(tmp)
        for np_ in args.np:
            for model in args.models:
                times = {v: [] for v in VARIANTS}
                for rep in range(args.repeats):
                    for variant in (VARIANTS if rep % 2 == 0 else list(VARIANTS)[::-1]):
                        overrides = [*VARIANTS[variant], *args.extra]
                        recs = one_run(np_, model, "ddtrain", args, overrides, workdir)
                        times[variant] += [r["step_time_s"] for r in recs]
                        print(f"  np {np_} {model:8s} {variant:8s} run {rep + 1}: median step "
                              f"{statistics.median(r['step_time_s'] for r in recs) * 1e3:.2f} ms", flush=True)
                med = {v: statistics.median(t) for v, t in times.items()}
                spread = {v: (min(t), max(t)) for v, t in times.items()}
                rows.append((np_, model, med, spread, len(times["eager"])))
    command = "python launch/bench_compile.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    cpu = platform.processor() or platform.machine()
    print(f"\ndate: {dt.date.today().isoformat()}; host: {platform.node()} ({cpu}, {os.cpu_count()} cores); "
          f"command: `{command}`\n")
    print("| ranks | model | eager step, ms: median (min-max) | compiled step, ms: median (min-max) "
          "| ratio compiled/eager | steps timed per variant |")
    print("|---|---|---|---|---|---|")
    for np_, model, med, spread, n in rows:
        cell = {v: f"{med[v] * 1e3:.2f} ({spread[v][0] * 1e3:.2f}-{spread[v][1] * 1e3:.2f})"
                for v in VARIANTS}
        ratio = med["compiled"] / med["eager"]
        print(f"| {np_} | {model} | {cell['eager']} | {cell['compiled']} | {ratio:.3f} | {n} |")


if __name__ == "__main__":
    main()
