"""The measured side of a scaling study: launched training runs, the all-reduce calibration and
the node-sharing probe, each a real job started by ``Launcher`` exactly as ``ddtrain-launch``
starts a user's; and the summaries of their per-step timings.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import statistics
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ddtrain.config import TrainConfig, to_mapping
from ddtrain.launcher.mpirun import console_script
from ddtrain.launcher.policy import Target, resolve_target
from ddtrain.scaling.config import ScaleConfig
from ddtrain.scaling.spread import percentile, relative_range, robust_cv

log = logging.getLogger("ddtrain")


class StudyError(RuntimeError):
    """A study that cannot go on; the message is one line naming the cause and the fix."""


# ----------------------------------------------------------------------------- summaries
def trimmed_per_step(records: list[dict], warmup: int) -> dict[str, list[float]]:
    """One run's per-step timings from its metrics.jsonl records, its warm-up steps dropped."""
    per_step: dict[str, list[float]] = {}
    for rec in records:
        for key, values in (rec.get("per_step") or {}).items():
            if values is not None:
                per_step.setdefault(key, []).extend(values)
    out = {k: v[warmup:] for k, v in per_step.items()}
    # The run's training state per worker (counted once, carried by every record), one entry per
    # step so that pooling runs keeps it with their steps.
    state = records[-1].get("state_bytes_per_worker") if records else None
    if state is not None:
        out["state_bytes_per_worker"] = [float(state)] * len(out.get("step_time_s", []))
    return out


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
        "forward_s": phase("forward_s"),
        "backward_s": phase("backward_s"),
        "comm_exposed_s": phase("comm_exposed_s"),
        "data_s": phase("data_s"),
        "optimizer_s": phase("optimizer_s"),
        "state_bytes_per_worker": phase("state_bytes_per_worker"),
        "cv": robust_cv(steps),  # jitter for the straggler model
        "per_step": per_step,
    }


# ----------------------------------------------------------------------------- launching
class Launcher:
    """Starts a study's jobs through the launch policy that ``ddtrain-launch`` uses
    (``ddtrain.launcher.policy``), so each worker runs as a user's job does: same binding, same
    flags, same forwarded variables.

    One worker goes through the launcher too, as ``ddtrain-launch -n 1`` does: every size then
    starts with the same binding, environment and rank detection, and the sizes differ only in
    their number of workers.
    """

    def __init__(self, scale: ScaleConfig, environ: Mapping[str, str] | None = None):
        self.scale = scale
        self.environ = dict(os.environ if environ is None else environ)
        self._target: Target | None = None

    @property
    def target(self) -> Target:
        """This machine's launcher, MPI flavour and child environment, found on first use."""
        if self._target is None:
            self._target = resolve_target(self.scale.launcher, environ=self.environ, mpi=self.scale.mpi,
                                          hostfile=self.scale.hostfile or None,
                                          extra=self.scale.launcher_args)
        return self._target

    def argv(self, n: int, program: list[str]) -> list[str]:
        return self.target.command(n, program)

    def run(self, n: int, program: list[str], log_path: Path, what: str) -> None:
        argv = self.argv(n, program)
        timeout_s = self.scale.timeout_s
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as out:
            out.write("$ " + shlex.join(argv) + "\n")
            out.flush()
            try:
                proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s,
                                      env=self.target.env)
            except subprocess.TimeoutExpired:
                raise StudyError(f"{what} did not finish in scale.timeout_s={timeout_s:g} s; "
                                 f"see {log_path}") from None
        if proc.returncode != 0:
            tail = [ln for ln in log_path.read_text().splitlines() if "error" in ln.lower()][-1:]
            hint = f" ({tail[0].strip()})" if tail else ""
            raise StudyError(f"{what} failed with exit code {proc.returncode}{hint}; full log: {log_path}")


# ----------------------------------------------------------------------------- measuring
def per_worker_batch(fixed_batches: dict[str, int], mode: str, n: int) -> int:
    """Weak scaling keeps the per-worker batch; strong scaling splits the global one."""
    return fixed_batches[mode] if mode == "weak" else fixed_batches[mode] // n


@dataclass(frozen=True)
class TrainingRuns:
    """What every measured training run of a study shares: the study, how workers are started,
    the training overrides, the threads per worker (0: the trainer's default) and where to write."""

    scale: ScaleConfig
    launcher: Launcher
    overrides: list[str]
    threads: int
    study_dir: Path

    def measure(self, mode: str, n: int, batch: int, repeat: int) -> dict[str, list[float]]:
        """One launched training run at ``n`` workers; its per-step timings after warm-up."""
        scale = self.scale
        name = f"{mode}-n{n}" + (f"-r{repeat}" if scale.repeats > 1 else "")
        run_dir = self.study_dir / "runs" / name
        steps = scale.warmup_steps + scale.steps
        forced = [
            f"data.batch_size={batch}", f"trainer.steps={steps}",
            f"trainer.log_every={max(1, min(10, steps))}", "trainer.progress=false",
            "trainer.save_model=false", "trainer.checkpoint=false", "tensorboard=false",
            f"hydra.run.dir={run_dir}",
        ]
        if self.threads:
            forced.append(f"trainer.threads={self.threads}")
        self.launcher.run(n, [console_script("ddtrain"), *self.overrides, *forced],
                          self.study_dir / "runs" / f"{name}.log", f"the {mode}-scaling run at {n} worker(s)")
        metrics = run_dir / "metrics.jsonl"
        records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        return trimmed_per_step(records, scale.warmup_steps)

    def measure_all(self, fixed_batches: dict[str, int]) -> dict[tuple[str, int], dict]:
        """Every (mode, size), ``scale.repeats`` times, the order reversed on every other pass.

        Shared machines drift, so runs of different sizes are interleaved and their steps
        pooled: drift then hits every size alike instead of whichever ran during a slow spell.
        The jitter (``cv``) is each run's own spread, the median over runs: a synchronous step
        waits for the slowest worker of that step, while load that shifts between runs slows
        every worker alike and is no straggling. That shift is kept apart as ``pass_range``, the
        range of the runs' median steps over their median: how far one pass could land, and so
        the least model error this machine can resolve at that size.
        """
        pooled: dict[tuple[str, int], dict[str, list[float]]] = {}
        cvs: dict[tuple[str, int], list[float]] = {}
        passes: dict[tuple[str, int], list[float]] = {}  # each run's median step
        order = [(mode, n) for mode in self.scale.modes for n in self.scale.world_sizes]
        for r in range(self.scale.repeats):
            for mode, n in order if r % 2 == 0 else order[::-1]:
                batch = per_worker_batch(fixed_batches, mode, n)
                log.info("measuring %s scaling at %d worker(s), batch %d per worker (pass %d/%d) ...",
                         mode, n, batch, r + 1, self.scale.repeats)
                run = self.measure(mode, n, batch, r)
                summary = summarise(run)
                self._record(mode, n, batch, r, summary)
                cvs.setdefault((mode, n), []).append(summary["cv"])
                passes.setdefault((mode, n), []).append(summary["step_time_s"])
                for key, values in run.items():
                    pooled.setdefault((mode, n), {}).setdefault(key, []).extend(values)
        return {key: {**summarise(per_step), "cv": statistics.median(cvs[key]),
                      "pass_step_times_s": passes[key], "pass_range": relative_range(passes[key])}
                for key, per_step in pooled.items()}

    def _record(self, mode: str, n: int, batch: int, repeat: int, summary: dict) -> None:
        """Log one run's summary and append it to measurements.jsonl, which keeps every finished
        run even if a later size fails."""
        log.info("  step median %.4f s (p90 %.4f), compute %.4f, exposed comm %s",
                 summary["step_time_s"], summary["step_time_p90_s"], summary["compute_s"] or 0.0,
                 "n/a" if summary["comm_exposed_s"] is None else f"{summary['comm_exposed_s']:.4f}")
        with open(self.study_dir / "measurements.jsonl", "a") as f:
            f.write(json.dumps({"mode": mode, "world_size": n, "batch_per_worker": batch, "pass": repeat,
                                **{k: v for k, v in summary.items() if k != "per_step"}}) + "\n")


def calibrate_allreduce(scale: ScaleConfig, launcher: Launcher, n: int, study_dir: Path, device: str,
                        name: str = "allreduce") -> dict:
    """The all-reduce's latency and bus bandwidth at ``n`` workers, fitted by a launched
    ``ddtrain.perf.allreduce`` job (its results in ``<name>.json``)."""
    out = study_dir / f"{name}.json"
    max_bytes = int(scale.allreduce_max_mb * 1024 * 1024)
    program = [sys.executable, "-m", "ddtrain.perf.allreduce", f"--max-bytes={max_bytes}", f"--out={out}",
               f"--device={device}", f"--budget-s={scale.allreduce_budget_s}"]
    launcher.run(n, program, study_dir / f"{name}.log", f"the all-reduce calibration at {n} workers")
    return json.loads(out.read_text())


# Timed steps per worker in the node-sharing probe, at the least.
PROBE_STEPS = 10


def measure_node_slowdown(cfg: TrainConfig, launcher: Launcher, k: int, batch: int, threads: int,
                          study_dir: Path, repeats: int, steps: int = PROBE_STEPS) -> tuple[float, float]:
    """(compute, optimizer step): each phase's time in one worker when k workers share this
    node, over its time alone.

    The probe (``ddtrain.scaling.probe``) is launched as the jobs are (same binding, same
    nodes), ``repeats`` times. Its k workers train with no communication; every step each times
    its phases once with all k running them at once (meeting before each step and each
    optimizer step, as a synchronous job's ranks do) and once alone while the others wait, a
    few hundred milliseconds apart. Each factor is the median over every worker's steps of that
    step's ratio: a slow spell of the machine that lasts a step cancels in it, where separate
    launches of k workers and of one would each land on whichever spell they met. Each worker
    times ``steps`` steps (the study's scale.steps, at least PROBE_STEPS): the two factors scale
    every predicted point at N, so they need as many samples as a measured point.
    """
    probe = study_dir / "node_probe"
    probe.mkdir(parents=True, exist_ok=True)
    config = probe / "config.json"
    config.write_text(json.dumps(to_mapping(replace(cfg, trainer=replace(cfg.trainer, threads=threads)))))
    compute, optimizer = [], []
    for r in range(repeats):
        out = probe / f"r{r}"
        program = [sys.executable, "-m", "ddtrain.scaling.probe", str(config), str(batch), str(out),
                   str(max(PROBE_STEPS, steps))]
        launcher.run(k, program, probe / f"r{r}.log", f"the node-sharing probe with {k} workers")
        for f in sorted(out.glob("*.json")):
            pairs = json.loads(f.read_text())
            for (c_k, o_k), (c_1, o_1) in zip(pairs["together"], pairs["alone"]):
                compute.append(c_k / c_1)
                optimizer.append(o_k / o_1)
    if not compute:
        raise StudyError(f"the node-sharing probe wrote no timings under {probe}; see its logs there")
    return statistics.median(compute), statistics.median(optimizer)
