"""Run a scaling study: train at each world size through the launcher, profile one worker,
calibrate the all-reduce, model every size, and write the report.

The driver is one process. Every measured point is a separate, real ``mpirun -np N ddtrain``
job (or srun), so what is measured is exactly what users run.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ddtrain.config import TrainConfig
from ddtrain.launcher.mpirun import (
    child_env,
    console_script,
    find_mpirun,
    mpirun_argv,
    running_as_root,
    srun_argv,
)
from ddtrain.perf.mfu import fraction_of_peak
from ddtrain.perf.peak import Peak, datasheet_peak_for, resolve_peak
from ddtrain.scaling.config import ScaleConfig
from ddtrain.scaling.model import Cluster, Profile, predict_step
from ddtrain.scaling.profile import profile_worker
from ddtrain.scaling.report import format_table, write_report

log = logging.getLogger("ddtrain")


class StudyError(RuntimeError):
    """A study that cannot go on; the message is one line naming the cause and the fix."""


# ----------------------------------------------------------------------------- measuring
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 100]."""
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def trimmed_per_step(records: list[dict], warmup: int) -> dict[str, list[float]]:
    """One run's per-step timings from its metrics.jsonl records, its warm-up steps dropped."""
    per_step: dict[str, list[float]] = {}
    for rec in records:
        for key, values in (rec.get("per_step") or {}).items():
            if values is not None:
                per_step.setdefault(key, []).extend(values)
    return {k: v[warmup:] for k, v in per_step.items()}


def summarise(per_step: dict[str, list[float]]) -> dict:
    """Median, p90 and phase medians of measured steps (one run's, or several runs' pooled)."""
    steps = per_step.get("step_time_s", [])
    if len(steps) < 3:
        raise StudyError(f"only {len(steps)} measured steps after warm-up; raise scale.steps")
    med = statistics.median(steps)

    def phase(key):
        return statistics.median(per_step[key]) if per_step.get(key) else None

    return {
        "step_time_s": med,
        "step_time_p90_s": percentile(steps, 90),
        "compute_s": phase("compute_s"),
        "comm_exposed_s": phase("comm_exposed_s"),
        "data_s": phase("data_s"),
        "optimizer_s": phase("optimizer_s"),
        # Jitter for the straggler model: robust spread (IQR / 1.349 = sd for a normal) so one
        # hiccup of the machine does not dominate.
        "cv": (percentile(steps, 75) - percentile(steps, 25)) / 1.349 / med,
        "per_step": per_step,
    }


@dataclass
class Launcher:
    sc: ScaleConfig

    def argv(self, n: int, program: list[str]) -> list[str]:
        # One worker goes through the launcher too: mpirun binds ranks to cores, and a study
        # whose one-worker run floats between cores while the others are pinned compares
        # unlike with unlike (one study here: an unpinned 1-rank step of 0.306 s against 0.275 s
        # for each of 2 pinned ranks; a single observation on a drifting machine).
        if self.sc.launcher == "mpirun":
            return mpirun_argv(n, program, mpirun=find_mpirun(), hostfile=self.sc.hostfile or None,
                               slots=None if self.sc.hostfile else os.cpu_count(),
                               extra=self.sc.launcher_args)
        return srun_argv(n, program, extra=self.sc.launcher_args)

    def run(self, n: int, program: list[str], log_path: Path, what: str) -> None:
        argv = self.argv(n, program)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as out:
            out.write("$ " + shlex.join(argv) + "\n")
            out.flush()
            try:
                proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=self.sc.timeout_s,
                                      env=child_env(os.environ, is_root=running_as_root()))
            except subprocess.TimeoutExpired:
                raise StudyError(f"{what} did not finish in scale.timeout_s={self.sc.timeout_s:g} s; "
                                 f"see {log_path}") from None
        if proc.returncode != 0:
            tail = [ln for ln in log_path.read_text().splitlines() if "error" in ln.lower()][-1:]
            hint = f" ({tail[0].strip()})" if tail else ""
            raise StudyError(f"{what} failed with exit code {proc.returncode}{hint}; full log: {log_path}")


def per_worker_batch(batches: dict[str, int], mode: str, n: int) -> int:
    """Weak scaling keeps the per-worker batch; strong scaling splits the global one."""
    return batches[mode] if mode == "weak" else batches[mode] // n


def measure(sc: ScaleConfig, launcher: Launcher, overrides: list[str], mode: str, n: int,
            batch: int, threads: int, study_dir: Path, repeat: int) -> dict[str, list[float]]:
    """One launched training run at ``n`` workers; its per-step timings after warm-up."""
    name = f"{mode}-n{n}" + (f"-r{repeat}" if sc.repeats > 1 else "")
    run_dir = study_dir / "runs" / name
    forced = [
        f"data.batch_size={batch}", f"trainer.steps={sc.warmup_steps + sc.steps}",
        f"trainer.log_every={max(1, min(10, sc.warmup_steps + sc.steps))}", "trainer.progress=false",
        "trainer.save_model=false", "trainer.checkpoint=false", "tensorboard=false",
        f"hydra.run.dir={run_dir}",
    ]
    if threads:
        forced.append(f"trainer.threads={threads}")
    launcher.run(n, [console_script("ddtrain"), *overrides, *forced], study_dir / "runs" / f"{name}.log",
                 f"the {mode}-scaling run at {n} worker(s)")
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return trimmed_per_step(records, sc.warmup_steps)


def measure_all(sc, launcher, overrides, batches, threads, study_dir) -> dict[tuple[str, int], dict]:
    """Every (mode, size), ``scale.repeats`` times, the order reversed on every other pass.

    Shared machines drift (here: one rank's steps ranged from 0.20 to 0.38 s within 40 s), so
    runs of different sizes are interleaved and their steps pooled: drift then hits every size
    alike instead of whichever ran during a slow spell.
    """
    pooled: dict[tuple[str, int], dict[str, list[float]]] = {}
    order = [(mode, n) for mode in sc.modes for n in sc.world_sizes]
    for r in range(sc.repeats):
        for mode, n in order if r % 2 == 0 else order[::-1]:
            b = per_worker_batch(batches, mode, n)
            log.info("measuring %s scaling at %d worker(s), batch %d per worker (pass %d/%d) ...",
                     mode, n, b, r + 1, sc.repeats)
            run = measure(sc, launcher, overrides, mode, n, b, threads, study_dir, r)
            m = summarise(run)
            log.info("  step median %.4f s (p90 %.4f), compute %.4f, exposed comm %s", m["step_time_s"],
                     m["step_time_p90_s"], m["compute_s"] or 0.0,
                     "n/a" if m["comm_exposed_s"] is None else f"{m['comm_exposed_s']:.4f}")
            with open(study_dir / "measurements.jsonl", "a") as f:  # kept even if a later size fails
                f.write(json.dumps({"mode": mode, "world_size": n, "batch_per_worker": b, "pass": r,
                                    **{k: v for k, v in m.items() if k != "per_step"}}) + "\n")
            for key, values in run.items():
                pooled.setdefault((mode, n), {}).setdefault(key, []).extend(values)
    return {key: summarise(per_step) for key, per_step in pooled.items()}


def calibrate_allreduce(sc: ScaleConfig, launcher: Launcher, n: int, study_dir: Path, device: str) -> dict:
    out = study_dir / "allreduce.json"
    max_bytes = int(sc.allreduce_max_mb * 1024 * 1024)
    program = [sys.executable, "-m", "ddtrain.perf.allreduce", f"--max-bytes={max_bytes}", f"--out={out}",
               f"--device={device}", "--budget-s=0.2"]
    launcher.run(n, program, study_dir / "allreduce.log", f"the all-reduce calibration at {n} workers")
    return json.loads(out.read_text())


def measure_node_slowdown(cfg: TrainConfig, launcher: Launcher, k: int, batch: int, threads: int,
                          study_dir: Path, repeats: int) -> float:
    """Compute time of one worker when k workers share this node, over its time alone.

    Both are measured back to back, through the launcher (same core binding), as k independent
    one-worker profiles with no communication, so the ratio isolates what the workers do to
    each other's compute (shared cores, memory bandwidth, caches) from any network effect.
    """
    probe = study_dir / "node_probe"
    probe.mkdir(parents=True, exist_ok=True)
    config = probe / "config.json"
    config.write_text(json.dumps(asdict(replace(cfg, trainer=replace(cfg.trainer, threads=threads)))))
    compute: dict[int, list[float]] = {1: [], k: []}
    for r in range(repeats):  # interleaved, like the training runs, against drift
        for workers in (1, k) if r % 2 == 0 else (k, 1):
            out = probe / f"k{workers}-r{r}"
            program = [sys.executable, "-m", "ddtrain.scaling.profile", str(config), str(batch), str(out)]
            what = f"the node-sharing probe with {workers} worker(s)"
            launcher.run(workers, program, probe / f"k{workers}-r{r}.log", what)
            for f in sorted(out.glob("*.json")):
                prof = json.loads(f.read_text())
                compute[workers].append(prof["forward_s"] + prof["backward_s"])
    return statistics.median(compute[k]) / statistics.median(compute[1])


def from_measured_run(p: Profile, run: dict) -> Profile:
    """The in-process profile gives the bucket ready points and the forward/backward split; the
    real one-worker run (launched like every other size, over more steps) gives the times."""
    scale = run["compute_s"] / p.compute_s
    return replace(p, forward_s=p.forward_s * scale, backward_s=p.backward_s * scale,
                   optimizer_s=run["optimizer_s"], data_s=run["data_s"], cv=run["cv"])


def local_cluster(base: Cluster, fit: dict, n: int) -> Cluster:
    """This machine as a cluster: the fitted bus bandwidth, and the fitted per-call latency
    spread over the ring's 2(n-1) steps so the ring formula reproduces it at n."""
    bw = fit["fit"]["bus_bw_GBps"] or base.intra_bw_GBps
    step_lat = (fit["fit"]["alpha_s"] or 0.0) / (2 * (n - 1)) * 1e6
    return replace(base, intra_bw_GBps=bw, inter_bw_GBps=bw, intra_latency_us=step_lat,
                   inter_latency_us=step_lat)


# ----------------------------------------------------------------------------- rows
def _row(mode, kind, n, batch, step, rate1, flops, peak: Peak, cluster: str, **extra) -> dict:
    rate = n * batch / step
    achieved = batch * flops / step  # per worker
    return {
        "mode": mode, "kind": kind, "world_size": n, "batch_per_worker": batch, "global_batch": n * batch,
        "step_time_s": step, "step_time_p90_s": extra.get("step_time_p90_s"),
        "compute_s": extra.get("compute_s"), "comm_exposed_s": extra.get("comm_exposed_s"),
        "data_s": extra.get("data_s"), "comm_total_s": extra.get("comm_total_s"),
        "samples_per_s": rate, "speedup": rate / rate1, "scaling_efficiency": rate / (n * rate1),
        "tflops_per_worker": achieved / 1e12, "tflops_total": n * achieved / 1e12,
        "fraction_of_peak": fraction_of_peak(achieved, peak),
        "peak_tflops": peak.flops / 1e12, "peak_source": peak.label, "cluster": cluster,
    }


def run_study(
    cfg: TrainConfig, sc: ScaleConfig, cluster: Cluster, study_dir: Path, overrides: list[str]
) -> dict:
    study_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and cfg.trainer.device != "cpu"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    # On CPU a "worker" is a fixed share of cores, the same at every size; otherwise the one-rank
    # run would get all cores and every multi-rank run would look inefficient by construction.
    threads = 0 if cuda else (sc.threads_per_rank or max(1, cores // max(sc.world_sizes)))
    if threads:
        torch.set_num_threads(threads)
    launcher = Launcher(sc)

    peak = resolve_peak(device, cfg.trainer.precision, sc.peak)
    log.info("peak per worker: %s [%s]", peak.label, peak.source)

    batch = cfg.data.batch_size
    batches = {mode: (batch if mode == "weak" else sc.strong_global_batch(batch)) for mode in sc.modes}
    measured: dict[tuple[str, int], dict] = {}
    if not sc.predict_only:
        measured = measure_all(sc, launcher, overrides, batches, threads, study_dir)

    # Calibrate the network on this machine at the largest measured size.
    fit = None
    n_max = max(sc.world_sizes)
    if not sc.predict_only and n_max > 1:
        log.info("calibrating all-reduce at %d workers (1 KiB .. %g MiB) ...", n_max, sc.allreduce_max_mb)
        fit = calibrate_allreduce(sc, launcher, n_max, study_dir, device.type)
        log.info("  alpha %.1f us, bus bandwidth %.3f GB/s", (fit["fit"]["alpha_s"] or 0) * 1e6,
                 fit["fit"]["bus_bw_GBps"] or float("nan"))
    model_cluster = cluster
    if not cluster.device:
        if fit is None:
            raise StudyError("cluster=local needs a measured all-reduce: measure at least 2 workers "
                             "(e.g. scale.world_sizes=[1,2]) or pick a preset such as cluster=dgx_h100")
        model_cluster = local_cluster(cluster, fit, n_max)
        if not cuda and not sc.hostfile:
            # CPU workers on one node share it; GPUs do not (one device each), so skip it there.
            log.info("measuring node sharing: %d concurrent one-worker profiles vs one ...", n_max)
            slowdown = measure_node_slowdown(cfg, launcher, n_max, batch, threads, study_dir, sc.repeats)
            log.info("  compute is %.3fx slower with %d workers on this node", slowdown, n_max)
            model_cluster = replace(model_cluster, node_slowdown=slowdown)

    # The model's compute inputs: one worker profiled in this process, per distinct batch.
    target_peak = peak
    transfer = 1.0
    if cluster.device:
        target_peak = datasheet_peak_for(cluster.device, cfg.trainer.precision)
        # Carried to another device at the same fraction of peak as measured here.
        transfer = peak.flops / target_peak.flops
    profiles: dict[int, Profile] = {}
    # CPU workers that fill every core leave none for the communication threads: gloo's
    # all-reduce then runs in the compute's time slices instead of beside it, so nothing hides
    # (a GPU's collectives run on their own engines and SMs, and overlap as modelled).
    no_spare_core = not cuda and not cluster.device and threads * n_max >= cores

    def profile_for(b: int, mode: str) -> Profile:
        if b not in profiles:
            log.info("profiling one worker at batch %d ...", b)
            profiles[b] = profile_worker(cfg, b, device)
        p = profiles[b]
        one = measured.get((mode, 1))
        if one is not None and b == batches[mode]:
            p = from_measured_run(p, one)
        if no_spare_core:
            p = replace(p, overlap=False)
        return p.scaled_compute(transfer) if transfer != 1.0 else p

    rows: list[dict] = []
    per_step: dict[str, dict[str, list[float]]] = {}
    flops = None
    for mode in sc.modes:
        gb = batches[mode]
        for_sizes = [n for n in sc.sizes_to_predict() if mode == "weak" or gb % n == 0]
        b1 = per_worker_batch(batches, mode, 1)
        base = profile_for(b1, mode)
        flops = base.flops_per_sample
        t1 = predict_step(base, model_cluster, 1).step_s
        pred_rate1 = b1 / t1
        for n in for_sizes:
            b = per_worker_batch(batches, mode, n)
            pred = predict_step(profile_for(b, mode), model_cluster, n)
            rows.append(_row(mode, "predicted", n, b, pred.step_s, pred_rate1, flops, target_peak,
                             model_cluster.name, compute_s=pred.compute_s, comm_exposed_s=pred.comm_exposed_s,
                             comm_total_s=pred.comm_s))
        if (mode, 1) in measured:
            rate1 = b1 / measured[(mode, 1)]["step_time_s"]
            for n in sc.world_sizes:
                m = measured[(mode, n)]
                b = per_worker_batch(batches, mode, n)
                phases = {k: m[k] for k in ("step_time_p90_s", "compute_s", "comm_exposed_s", "data_s")}
                rows.append(_row(mode, "measured", n, b, m["step_time_s"], rate1, flops, peak, "this machine",
                                 **phases))
                per_step[f"{mode}-n{n}"] = m["per_step"]
    rows.sort(key=lambda r: (r["mode"], r["kind"], r["world_size"]))

    model_error = {}
    for r in rows:
        if r["kind"] == "measured" and not cluster.device:
            p = next(x for x in rows if x["kind"] == "predicted" and x["mode"] == r["mode"]
                     and x["world_size"] == r["world_size"])
            model_error[f"{r['mode']}-n{r['world_size']}"] = p["step_time_s"] / r["step_time_s"] - 1
    meta = {
        "command": shlex.join(["ddtrain-scale", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu, {threads} thread(s) per worker",
        "peak_measured_here": asdict(peak), "peak_predicted_for": asdict(target_peak),
        "compute_transfer_factor": transfer,
        "cluster": asdict(model_cluster), "scale": asdict(sc), "train_overrides": overrides,
        "allreduce_fit": fit["fit"] if fit else None,
        "profiles": {str(b): asdict(p) for b, p in profiles.items()},
        "predicted_over_measured_step_time_minus_1": model_error,
    }
    title = f"ddtrain scaling: {cfg.model.name}, {', '.join(sc.modes)} scaling, cluster {model_cluster.name}"
    paths = write_report(study_dir, rows, meta, per_step, title=title)
    print(format_table(rows), flush=True)
    if model_error:
        log.info("model vs measured step time: %s",
                 ", ".join(f"{k} {v * 100:+.1f}%" for k, v in model_error.items()))
    return {"rows": rows, "meta": meta, "paths": paths}
