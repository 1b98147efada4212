#!/usr/bin/env python3
"""ddtrain's reducer against torch DDP, side by side: same model, ranks, bucket size, data.

Runs alternate (ddtrain, ddp, ddp, ddtrain, ...) so drift in machine load hits both engines
alike. Each run is a real ``mpirun -np N ddtrain ...``; the per-step time is what the trainer
logs (max over ranks), warm-up steps dropped. Prints a markdown table with the step-time
ratio ddtrain / torch_ddp (below 1.0: ddtrain is faster) and where it was measured.

    python launch/bench_engines.py --np 2 --models convnet gpt --repeats 3
    python launch/bench_engines.py --np 8 --models resnet -- model.depth=50 data.batch_size=64
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from ddtrain.launcher.flavour import LaunchError
from ddtrain.launcher.mpirun import console_script
from ddtrain.launcher.policy import Target, resolve_target

ENGINES = ("ddtrain", "torch_ddp")


@functools.cache
def launcher() -> Target:
    """Every size goes through mpirun, one rank too, with ddtrain-launch's flags and environment:
    both engines then run exactly as a user's job does. Looked up once (it asks mpirun its MPI)."""
    try:
        return resolve_target("mpirun", environ=os.environ)
    except LaunchError as e:
        sys.exit(f"bench_engines: {e}")


def one_run(np_: int, model: str, engine: str, args, extra: list[str], workdir: Path) -> list[dict]:
    run_dir = workdir / f"{model}-{engine}-{len(list(workdir.iterdir()))}"
    overrides = [
        f"model={model}", f"comm.engine={engine}", f"comm.bucket_mb={args.bucket_mb}",
        f"trainer.steps={args.steps}", "trainer.log_every=1", "trainer.progress=false",
        "tensorboard=false", "trainer.save_model=false", f"hydra.run.dir={run_dir}", *extra,
    ]
    argv = launcher().command(np_, [console_script("ddtrain"), *overrides])
    proc = subprocess.run(argv, env=launcher().env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        sys.exit(f"bench_engines: run failed ({engine}, {model}):\n{proc.stderr[-2000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["step"] > args.warmup]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--np", type=int, default=2, help="ranks (mpirun -np)")
    ap.add_argument("--models", nargs="+", default=["convnet", "gpt"])
    ap.add_argument("--repeats", type=int, default=3, help="runs per engine, alternating")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10, help="leading steps left out of the timing")
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="bucket size for both engines")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("extra", nargs="*", help="Hydra overrides for both engines (after --)")
    args = ap.parse_args()
    if args.warmup >= args.steps:
        sys.exit(f"bench_engines: --warmup {args.warmup} must be below --steps {args.steps}")

    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="ddtrain-bench-") as tmp:
        workdir = Path(tmp)
        for model in args.models:
            times = {e: [] for e in ENGINES}
            exposed = []
            for rep in range(args.repeats):
                order = ENGINES if rep % 2 == 0 else ENGINES[::-1]
                for engine in order:
                    recs = one_run(args.np, model, engine, args, args.extra, workdir)
                    times[engine] += [r["step_time_s"] for r in recs]
                    if engine == "ddtrain":
                        exposed += [r["comm_exposed_s"] for r in recs]
                    print(f"  {model:8s} {engine:9s} run {rep + 1}: median step "
                          f"{statistics.median(r['step_time_s'] for r in recs) * 1e3:.2f} ms", flush=True)
            med = {e: statistics.median(v) for e, v in times.items()}
            results[model] = {
                "median_step_s": med,
                "p90_step_s": {e: statistics.quantiles(v, n=10)[-1] for e, v in times.items()},
                "ratio": med["ddtrain"] / med["torch_ddp"],
                "ddtrain_comm_exposed_median_s": statistics.median(exposed),
                "steps_timed": {e: len(v) for e, v in times.items()},
            }

    command = "python launch/bench_engines.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    print()
    cpu = platform.processor() or platform.machine()
    print(f"date: {dt.date.today().isoformat()}; host: {platform.node()} ({cpu}, {os.cpu_count()} cores); "
          f"ranks: {args.np}; command: `{command}`")
    print()
    print("| model | ddtrain median step (ms) | torch_ddp median step (ms) | ratio ddtrain/ddp | "
          "ddtrain exposed comm (ms) | steps timed per engine |")
    print("|---|---|---|---|---|---|")
    for model, r in results.items():
        med = r["median_step_s"]
        print(f"| {model} | {med['ddtrain'] * 1e3:.2f} | {med['torch_ddp'] * 1e3:.2f} | {r['ratio']:.3f} | "
              f"{r['ddtrain_comm_exposed_median_s'] * 1e3:.2f} | {r['steps_timed']['ddtrain']} |")
    if args.json:
        args.json.write_text(json.dumps({"command": command, "np": args.np, "results": results}, indent=2))


if __name__ == "__main__":
    main()
