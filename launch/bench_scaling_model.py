#!/usr/bin/env python3
"""How close is ddtrain's performance model to measurement on this machine?

Runs ``ddtrain-scale`` (measured 1..N workers, all-reduce calibrated, model fitted from the
one-worker profile) several times and prints, per world size, the model's step time against
the measured one, as a markdown table with the device, command and date for docs/BENCHMARKS.md.
The one-worker point is the model's input, so only N > 1 tests the model.

    python launch/bench_scaling_model.py --studies 3 -- scale.world_sizes=[1,2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ddtrain.launcher.cores import usable_cpus
from ddtrain.launcher.mpirun import child_env, console_script, running_as_root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=3)
    ap.add_argument("--keep", type=Path, help="keep the study directories here")
    ap.add_argument("overrides", nargs="*", help="ddtrain-scale overrides (after --)")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_scaling_model-"))
    errors: dict[str, list[float]] = {}
    measured: dict[str, list[float]] = {}
    for i in range(args.studies):
        study = root / f"study{i}"
        argv = [console_script("ddtrain-scale"), *args.overrides, f"hydra.run.dir={study}"]
        print(f"[{i + 1}/{args.studies}] {shlex.join(argv)}", file=sys.stderr, flush=True)
        proc = subprocess.run(argv, env=child_env(os.environ, is_root=running_as_root()),
                              capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"bench_scaling_model: study {i} failed:\n{proc.stderr[-2000:]}")
        report = json.loads((study / "scaling.json").read_text())
        for key, err in report["meta"]["predicted_over_measured_step_time_minus_1"].items():
            errors.setdefault(key, []).append(err)
        for r in report["rows"]:
            if r["kind"] == "measured":
                measured.setdefault(f"{r['mode']}-n{r['world_size']}", []).append(r["step_time_s"])
    print(f"\n{dt.date.today()}, {platform.node()}, {platform.processor() or platform.machine()}, "
          f"{usable_cpus()} cores; `python launch/bench_scaling_model.py --studies {args.studies} -- "
          f"{' '.join(args.overrides)}`\n")
    print("| size | measured step (s), per study | model error per study | max abs error |")
    print("|---|---|---|---|")
    for key in sorted(errors):
        errs = errors[key]
        print(f"| {key} | {', '.join(f'{x:.3f}' for x in measured[key])} | "
              f"{', '.join(f'{e * 100:+.1f}%' for e in errs)} | {max(abs(e) for e in errs) * 100:.1f}% |")
    multi = [abs(e) for k, errs in errors.items() if not k.endswith("-n1") for e in errs]
    print(f"\nN>1: worst error {max(multi) * 100:.1f}%, median {statistics.median(multi) * 100:.1f}%; "
          f"studies in {root}")


if __name__ == "__main__":
    main()
