"""The arithmetic of a run's records, in one place: the loop calls ``MetricsProcessor.step`` once
per optimizer step and never assembles a record itself.

A record covers the steps since the previous one. Its collectives (the loss mean, the per-step
max of step times) run on logging steps only, never per step, and every rank calls ``step`` for
every step, so all ranks issue them alike. Rank 0's writer writes; the others' does nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ddtrain.dist.group import DistContext, all_max_each, all_mean
from ddtrain.metrics.memory import peak_bytes
from ddtrain.perf.clock import StepClock
from ddtrain.perf.flops import MODEL_FORMULA

log = logging.getLogger("ddtrain")


@dataclass(frozen=True)
class Workload:
    """What one optimizer step processes, for turning step times into rates."""

    samples_per_step: int  # global: ranks x batch x grad_accum
    flops_per_sample: float  # forward + backward
    tokens_per_sample: int  # 0 for models that do not read tokens
    flops_source: str = MODEL_FORMULA  # or counted on one batch (ddtrain/perf/flops.py)


@dataclass
class StepView:
    """What the loop knows about one finished step."""

    step: int  # optimizer steps done, this one included
    loss: torch.Tensor  # this rank's mean loss (device tensor; read on logging steps only)
    data_s: float  # host seconds spent gathering batches
    grad_norm: float
    skipped_total: int  # non-finite steps skipped so far
    force: bool = False  # log this step whatever log_every says (a stop)


class MetricsProcessor:
    def __init__(self, ctx: DistContext, writer, clock: StepClock, workload: Workload, *,
                 log_every: int, last_step: int, measures_exposed_comm: bool,
                 lr: Callable[[], float], epoch: Callable[[int], float], progress=None,
                 uncounted_through: int = 0):
        """``uncounted_through``: steps up to this number are left out of a record's timings when
        its window holds later steps too (a first step that compiles is not training speed)."""
        self.ctx, self.writer, self.clock, self.workload = ctx, writer, clock, workload
        self.uncounted_through = uncounted_through
        self.log_every, self.last_step = log_every, last_step
        self.measures_exposed_comm = measures_exposed_comm
        self._lr, self._epoch, self._bar = lr, epoch, progress
        self._data_s: list[float] = []
        self.history: list[dict[str, Any]] = []
        self.validations: list[dict[str, Any]] = []
        self.memory: dict[str, int] = {}  # training-state bytes per rank (metrics/memory.py), once counted

    def step(self, view: StepView) -> dict[str, Any] | None:
        """Account one step; on a logging step, build the record, write it and return it."""
        self._data_s.append(view.data_s)
        record = None
        if view.step % self.log_every == 0 or view.step == self.last_step or view.force:
            record = self._record(view, self.clock.drain(), self._data_s)
            self._data_s = []
            self.history.append(record)
            self.writer.log(record)
            if self._bar is not None:
                self._bar.set_postfix(loss=f"{record['loss']:.4f}", sps=f"{record['samples_per_s']:.0f}")
        if self._bar is not None:
            self._bar.update(1)
        return record

    def validation(self, step: int, result: dict[str, float]) -> None:
        """Write a validation pass's result (already reduced over ranks) as its own record."""
        record = {"step": step, "split": "val", **result}
        self.validations.append(record)
        self.writer.log(record)
        accuracy = f", accuracy {result['val_accuracy']:.4f}" if "val_accuracy" in result else ""
        log.info("step %d: val loss %.4f%s", step, result["val_loss"], accuracy)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self.writer.close()

    def _record(self, view: StepView, steps: list[dict[str, float]], data_s: list[float]) -> dict[str, Any]:
        """``per_step`` keeps every step's timing so a study can drop warm-up steps and take
        medians and p90s. The step time is the max over ranks (a data-parallel step is as slow
        as its slowest rank); the phase split is this rank's (rank 0 writes the file)."""
        # The ranks' step times and peak memory, maxed in one collective.
        mine = [s["total"] for s in steps] + [float(peak_bytes(self.clock.device))]
        *totals, peak = all_max_each(self.ctx, mine)
        per_step = per_step_timings(steps, data_s, totals,
                                    self.measures_exposed_comm)
        first = view.step - len(steps) + 1
        keep = [i for i in range(len(steps)) if first + i > self.uncounted_through]
        if keep and len(keep) < len(steps):
            per_step = {k: None if v is None else [v[i] for i in keep] for k, v in per_step.items()}
        step_time = mean_or_none(per_step["step_time_s"])
        samples_per_s = self.workload.samples_per_step / step_time
        record = {
            "step": view.step,
            "loss": float(all_mean(self.ctx, view.loss).item()),  # mean over all ranks' samples
            "lr": self._lr(),
            "step_time_s": step_time,
            **{key: mean_or_none(per_step[key]) for key in ("compute_s", "forward_s", "backward_s", "data_s",
                                                            "comm_exposed_s", "optimizer_s")},
            "world_size": self.ctx.world_size,
            "samples_per_s": samples_per_s,
            "achieved_tflops": samples_per_s * self.workload.flops_per_sample / 1e12,
            "epoch": self._epoch(view.step),
            "grad_norm": view.grad_norm,
            "skipped_steps": view.skipped_total,
            "peak_memory_bytes": int(peak),
            **self.memory,
            "per_step": per_step,
        }
        if self.workload.tokens_per_sample:
            record["tokens_per_s"] = samples_per_s * self.workload.tokens_per_sample
        return record


def per_step_timings(steps: list[dict[str, float]], data_s: list[float], step_times: list[float],
                     measures_exposed_comm: bool) -> dict[str, list[float] | None]:
    """Each step's phases, from the clock's durations. Compute (forward + backward, summed over
    micro-steps) excludes the data wait, which the clock counts inside the forward phase;
    exposed communication is ``None`` for an engine that waits inside backward (torch DDP),
    where it cannot be told apart from compute: its backward holds those waits. Forward and
    backward are ``None`` for a clock that marks only their sum."""
    split = all("forward" in s and "backward" in s for s in steps)
    return {
        "step_time_s": list(step_times),
        "compute_s": [s["compute"] - d for s, d in zip(steps, data_s, strict=True)],
        "forward_s": [s["forward"] - d for s, d in zip(steps, data_s, strict=True)] if split else None,
        "backward_s": [s["backward"] for s in steps] if split else None,
        "data_s": list(data_s),
        "comm_exposed_s": [s["comm_exposed"] for s in steps] if measures_exposed_comm else None,
        "optimizer_s": [s["optimizer"] for s in steps],
    }


def mean_or_none(values: list[float] | None) -> float | None:
    return None if values is None else sum(values) / len(values)
