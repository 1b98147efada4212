"""The scaling model where communication dominates: ddtrain-scale studies on a cluster of network
namespaces with shaped links, each measured point set against the model's prediction.

    sudo python launch/bench_netns_model.py                       # 100mbit and 1gbit, 2x1 and 2x2
    sudo python launch/bench_netns_model.py --rates 1gbit --layouts 2x1 --workloads gpt

For every link rate and layout (nodes x ranks per node) it builds the cluster
(``ddtrain.testing.netns``), runs one ``ddtrain-scale`` study per workload on node1 across the
hostfile (one worker, and every rank of the layout), and prints, per measured point, the
measured and predicted step time and exposed communication with the model's error, plus the
all-reduce calibration's bus bandwidth against the link's nominal rate. Studies are kept under
``--out``; ``--report-only`` reprints the tables from them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ddtrain.launcher.mpirun import console_script
from ddtrain.testing import netns
from ddtrain.testing.lock import held

WORKLOADS = {
    "gpt": ["model=gpt", "data=chars", "data.batch_size=8"],
    "convnet": ["model=convnet", "data=synthetic", "data.batch_size=32"],
}
CLUSTER_NAME = "ddtbench"


def layout(text: str) -> tuple[int, int]:
    nodes, ranks = text.lower().split("x")
    return int(nodes), int(ranks)


def study_dir(out: Path, rate: str, lay: str, workload: str) -> Path:
    return out / f"{rate}-{lay}-{workload}"


def run_study(cluster: netns.Cluster, workload: str, world: int, directory: Path, args) -> float:
    overrides = [*WORKLOADS[workload], f"scale.world_sizes=[1,{world}]", f"scale.hostfile={cluster.hostfile}",
                 f"scale.steps={args.steps}", f"scale.warmup_steps={args.warmup}",
                 f"scale.repeats={args.repeats}", f"scale.allreduce_max_mb={args.allreduce_max_mb}",
                 f"scale.threads_per_rank={args.threads}", f"hydra.run.dir={directory}"]
    argv = netns.exec_argv(cluster, "node1", [console_script("ddtrain-scale"), *overrides])
    env = netns.node_env(cluster)
    directory.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(directory.with_suffix(".log"), "w") as log:
        proc = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"bench_netns_model: the study in {directory} failed (exit {proc.returncode}); "
                         f"see {directory.with_suffix('.log')}")
    return time.perf_counter() - t0


def rows_of(directory: Path) -> tuple[dict, dict[tuple[str, int], dict]]:
    data = json.loads((directory / "scaling.json").read_text())
    return data["meta"], {(r["kind"], int(r["world_size"])): r for r in data["rows"]}


def run_spread(directory: Path, n: int) -> str:
    """The step-time medians of the runs at ``n`` workers (the repeats), lowest to highest."""
    runs = [json.loads(line) for line in (directory / "measurements.jsonl").read_text().splitlines()]
    medians = sorted(r["step_time_s"] * 1e3 for r in runs if r["world_size"] == n)
    return ", ".join(f"{m:.0f}" for m in medians)


def repredicted(directory: Path, meta: dict, rows: dict, n: int) -> dict:
    """The predicted step and exposed communication at ``n`` workers, made again by this
    checkout's model from what the study stored: its in-process profile, its one-worker runs,
    its cluster and its all-reduce calibration. The study's own no-spare-core flag is the one
    whose step matches the step it predicted (that flag changes the step; later model changes
    of the split do not)."""
    import dataclasses
    import statistics

    from ddtrain.scaling.model import Bucket, Cluster, Profile, predict_step
    from ddtrain.scaling.study import measured_allreduces

    raw = dict(next(iter(meta["profiles"].values())))
    raw["buckets"] = tuple(Bucket(**b) for b in raw["buckets"])
    profile = Profile(**raw)
    runs = [json.loads(line) for line in (directory / "measurements.jsonl").read_text().splitlines()]
    ones = [r for r in runs if r["world_size"] == 1]
    one = rows[("measured", 1)]
    f = one["compute_s"] / profile.compute_s
    profile = dataclasses.replace(
        profile, forward_s=profile.forward_s * f, backward_s=profile.backward_s * f,
        data_s=one["data_s"] or 0.0,
        optimizer_s=statistics.median(r["optimizer_s"] for r in ones),
        cv=statistics.median(r["cv"] for r in ones))
    fields = {x.name for x in dataclasses.fields(Cluster)}
    cluster = Cluster(**{k: v for k, v in meta["cluster"].items() if k in fields})
    measured = measured_allreduces(cluster, json.loads((directory / "allreduce.json").read_text()))
    study_step = rows[("predicted", n)]["step_time_s"]
    candidates = [predict_step(dataclasses.replace(profile, overlap=o), cluster, n, measured)
                  for o in (True, False)]
    pred = min(candidates, key=lambda p: abs(p.step_s - study_step))
    return {"step_time_s": pred.step_s, "comm_exposed_s": pred.rank_exposed_s}


def error(pred: float | None, meas: float | None) -> str:
    if pred is None or meas is None or meas <= 0:
        return "-"
    return f"{(pred / meas - 1) * 100:+.1f}%"


def report(out: Path, rates: list[str], layouts: list[str], workloads: list[str], again: bool = False) -> str:
    lines = ["| link | layout | workload | N | step measured (ms) | its runs' medians (ms) | "
             "step predicted (ms) | error | exposed comm measured (ms) | predicted (ms) | error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    links = ["| link | layout | busbw at the largest size (MB/s) | nominal (MB/s) | ratio | "
             "fit: busbw (MB/s), alpha (ms) |", "|---|---|---|---|---|---|"]
    for rate in rates:
        nominal = netns.rate_bits_per_s(rate)
        for lay in layouts:
            for i, workload in enumerate(workloads):
                d = study_dir(out, rate, lay, workload)
                if not (d / "scaling.json").exists():
                    continue
                meta, rows = rows_of(d)
                fit = meta.get("allreduce_fit") or {}
                if i == 0 and fit.get("bus_bw_GBps"):
                    largest = max(json.loads((d / "allreduce.json").read_text())["rows"],
                                  key=lambda r: r["size_bytes"])
                    bw = largest["busbw_GBps"] * 1e3
                    nom = nominal / 8 / 1e6 if nominal else None
                    links.append(f"| {rate} | {lay} | {bw:.1f} | {nom or '-'} | "
                                 f"{bw / nom if nom else float('nan'):.2f} | {fit['bus_bw_GBps'] * 1e3:.1f}, "
                                 f"{fit['alpha_s'] * 1e3:.2f} |")
                for (kind, n), meas in sorted(rows.items()):
                    if kind != "measured" or n == 1:
                        continue
                    pred = repredicted(d, meta, rows, n) if again else rows.get(("predicted", n), {})
                    lines.append(
                        f"| {rate} | {lay} | {workload} | {n} | {meas['step_time_s'] * 1e3:.1f} | "
                        f"{run_spread(d, n)} | "
                        f"{pred.get('step_time_s', float('nan')) * 1e3:.1f} | "
                        f"{error(pred.get('step_time_s'), meas['step_time_s'])} | "
                        f"{(meas['comm_exposed_s'] or 0) * 1e3:.1f} | "
                        f"{(pred.get('comm_exposed_s') or 0) * 1e3:.1f} | "
                        f"{error(pred.get('comm_exposed_s'), meas['comm_exposed_s'])} |")
    return "\n".join(links) + "\n\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", nargs="+", default=["100mbit", "1gbit"])
    p.add_argument("--layouts", nargs="+", default=["2x1", "2x2"], help="nodes x ranks per node")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--allreduce-max-mb", type=float, default=16)
    p.add_argument("--timeout", type=float, default=1200)
    # One thread per worker keeps a 2-node x 1-rank layout from oversubscribing a 2-core machine.
    p.add_argument("--threads", type=int, default=1, help="threads per worker (default: 1)")
    p.add_argument("--cores", type=int, default=0,
                   help="CPUs of its own per node (default: 0, the nodes share this machine's)")
    p.add_argument("--out", type=Path, default=Path("outputs/netns_model"))
    p.add_argument("--report-only", action="store_true", help="reprint the table from --out")
    p.add_argument("--repredict", action="store_true",
                   help="with --report-only: predict again with this model, from the studies' inputs")
    p.add_argument("--lock", type=Path, help="hold this lock file (flock) during each study")
    args = p.parse_args(argv)
    out = args.out.resolve()
    if not args.report_only:
        try:
            netns.check_host()
        except netns.ClusterError as e:
            print(f"bench_netns_model: error: {e}", file=sys.stderr)
            return 2
        for rate in args.rates:
            for lay in args.layouts:
                nodes, ranks = layout(lay)
                cluster = netns.Cluster(CLUSTER_NAME, nodes, rate, netns.DEFAULT_SUBNET, ranks, args.cores)
                netns.up(cluster)
                try:
                    for workload in args.workloads:
                        d = study_dir(out, rate, lay, workload)
                        with held(args.lock):
                            took = run_study(cluster, workload, nodes * ranks, d, args)
                        print(f"{rate} {lay} {workload}: study in {took:.0f} s -> {d}", file=sys.stderr)
                finally:
                    netns.down(CLUSTER_NAME)
    cores = f"{args.cores} CPU(s) of its own each" if args.cores else "sharing its CPUs"
    print(f"device: {os.cpu_count()}-CPU machine, nodes are network namespaces {cores}; "
          f"{time.strftime('%Y-%m-%d')}; command: {' '.join(sys.argv)}")
    print(report(out, args.rates, args.layouts, args.workloads, again=args.repredict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
