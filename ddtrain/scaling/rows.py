"""The rows of a scaling report: one per (mode, kind, world size), predicted by the model or
measured here, with throughput, speedup, efficiency and fraction of peak from one definition.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

from ddtrain.config import TrainConfig
from ddtrain.perf.mfu import fraction_of_peak
from ddtrain.perf.peak import Peak
from ddtrain.scaling.config import GivenRate, ScaleConfig
from ddtrain.scaling.device_model import RooflineProfile, roofline_profile
from ddtrain.scaling.measure import StudyError, per_worker_batch
from ddtrain.scaling.memory import COMM_BYTES, StateModel, optimizer_state_bytes
from ddtrain.scaling.model import (
    SENSITIVITY,
    Cluster,
    MeasuredAllReduce,
    Profile,
    predict_step,
    varied_clusters,
)
from ddtrain.scaling.profile import profile_worker

log = logging.getLogger("ddtrain")


@dataclass(frozen=True, kw_only=True)
class Point:
    """One row's inputs: a step time at a world size, and the one-worker rate it is compared to."""

    mode: str  # weak | strong
    kind: str  # predicted | measured
    world_size: int
    batch_per_worker: int
    step_time_s: float
    one_worker_rate: float  # samples/s of one worker, of the same kind: speedup's denominator
    flops_per_sample: float
    peak: Peak  # per worker
    cluster: str
    step_time_p90_s: float | None = None
    # Measured rows: the range of the passes' median steps over their median (measure_all).
    step_time_pass_range: float | None = None
    compute_s: float | None = None
    comm_exposed_s: float | None = None
    data_s: float | None = None
    comm_total_s: float | None = None
    # One full node as the baseline, as papers report: its workers and its samples/s (None when
    # that size is neither measured nor predicted).
    node_size: int | None = None
    one_node_rate: float | None = None
    # Predicted rows: the step time with each input of model.SENSITIVITY varied.
    varied_step_s: dict[str, float] = field(default_factory=dict)
    state_bytes: float | None = None  # training state per worker (scaling/memory.py; measured: counted)

    def row(self) -> dict:
        n, batch, step = self.world_size, self.batch_per_worker, self.step_time_s
        rate = n * batch / step
        achieved = batch * self.flops_per_sample / step  # per worker
        vs_node = (rate / (n / self.node_size * self.one_node_rate)
                   if self.node_size and self.one_node_rate and n >= self.node_size else None)
        varied = {f"efficiency_{key}": (n * batch / self.varied_step_s[key]) / (n * self.one_worker_rate)
                  if key in self.varied_step_s else None for key in SENSITIVITY}
        return {
            "mode": self.mode, "kind": self.kind, "world_size": n, "batch_per_worker": batch,
            "global_batch": n * batch, "step_time_s": step, "step_time_p90_s": self.step_time_p90_s,
            "step_time_pass_range": self.step_time_pass_range,
            "compute_s": self.compute_s, "comm_exposed_s": self.comm_exposed_s, "data_s": self.data_s,
            "comm_total_s": self.comm_total_s, "samples_per_s": rate,
            "speedup": rate / self.one_worker_rate, "scaling_efficiency": rate / (n * self.one_worker_rate),
            "scaling_efficiency_vs_node": vs_node, "node_size": self.node_size, **varied,
            "tflops_per_worker": achieved / 1e12, "tflops_total": n * achieved / 1e12,
            "fraction_of_peak": fraction_of_peak(achieved, self.peak),
            "peak_tflops": self.peak.flops / 1e12, "peak_source": self.peak.label, "cluster": self.cluster,
            "state_bytes_per_worker": self.state_bytes,
        }


@dataclass
class Profiles:
    """The model's compute inputs: one worker profiled in this process, once per distinct batch.

    A mode's own one-worker run, when measured, replaces the profile's times at that batch;
    ``transfer`` carries compute to another device at the fraction of peak measured here.
    ``roofline_device`` (a peak-table GPU) replaces both: every batch's profile is one step
    recorded on the meta device and timed on that GPU's roofline, nothing measured here.
    ``given`` (a one-worker rate on the cluster's device) applies last: compute is scaled so
    that one worker's step takes what the given rate says, and every other batch keeps its
    time relative to that one.
    """

    cfg: TrainConfig
    device: torch.device
    fixed_batches: dict[str, int]
    measured: dict[tuple[str, int], dict]
    transfer: float = 1.0
    overlap: bool = True  # False: communication cannot hide behind compute (no spare core)
    by_batch: dict[int, Profile] = field(default_factory=dict)
    given: GivenRate | None = None
    roofline_device: str = ""
    roofline_runs: dict[int, RooflineProfile] = field(default_factory=dict)
    gloo: bool = False  # the workers predicted shard over Gloo (memory: the shard exchange's inboxes)

    def state_model(self) -> StateModel:
        """The training state's bytes per parameter for this config (``scaling/memory.py``)."""
        c = self.cfg
        return StateModel(param_bytes=4, comm_bytes=COMM_BYTES[c.comm.dtype],
                          optimizer_bytes=optimizer_state_bytes(c.optim.name, c.optim.momentum),
                          bucket_bytes=c.comm.bucket_mb * 2**20, inboxes=self.gloo)

    def params(self, p: Profile) -> int:
        return p.grad_bytes // COMM_BYTES[self.cfg.comm.dtype]

    def profile(self, batch: int, mode: str) -> Profile:
        """The worker at ``batch``, sharded as the study's runs are (comm.shard)."""
        return replace(self._carried(batch, mode), shard=self.cfg.comm.shard)

    def _carried(self, batch: int, mode: str) -> Profile:
        p = self._here(batch, mode)
        if self.given is not None and self.given.given:
            one = self._here(per_worker_batch(self.fixed_batches, mode, 1), mode)
            return given_compute(p, one, self.given)
        if self.roofline_device:
            return p
        return p.scaled_compute(self.transfer) if self.transfer != 1.0 else p

    def _here(self, batch: int, mode: str) -> Profile:
        """The profile as measured on this machine (its one-worker run's times where measured),
        or from the roofline device's model."""
        if self.roofline_device:
            if batch not in self.by_batch:
                log.info("recording one step at batch %d on the meta device for the %s roofline ...",
                         batch, self.roofline_device)
                self.roofline_runs[batch] = roofline_profile(self.cfg, batch, self.roofline_device)
                self.by_batch[batch] = self.roofline_runs[batch].profile
            return self.by_batch[batch]
        if batch not in self.by_batch:
            log.info("profiling one worker at batch %d ...", batch)
            self.by_batch[batch] = profile_worker(self.cfg, batch, self.device)
        p = self.by_batch[batch]
        one = self.measured.get((mode, 1))
        if one is not None and batch == self.fixed_batches[mode]:
            p = from_measured_run(p, one)
        return p if self.overlap else replace(p, overlap=False)


def given_compute(p: Profile, one: Profile, given: GivenRate) -> Profile:
    """``p`` with compute scaled so that ``one`` (the one-worker profile) takes the given step
    time; the forward:backward split set to the given ratio when there is one."""
    step = given.step_time(one.batch)
    compute_here = one.forward_s + one.backward_s + one.optimizer_s
    if step <= one.data_s or compute_here <= 0:
        raise StudyError(f"scale.given gives one worker a step of {step * 1e3:.3g} ms at batch {one.batch}, "
                         f"no longer than the data wait measured here ({one.data_s * 1e3:.3g} ms); check "
                         "the figure and its batch (the study's one-worker batch)")
    q = p.scaled_compute((step - one.data_s) / compute_here)
    if given.fwd_bwd_ratio:
        both = q.forward_s + q.backward_s
        fwd = both * given.fwd_bwd_ratio / (1 + given.fwd_bwd_ratio)
        q = replace(q, forward_s=fwd, backward_s=both - fwd)
    return q


def from_measured_run(p: Profile, run: dict) -> Profile:
    """The in-process profile gives the bucket ready points and the forward/backward split; the
    real one-worker run (launched like every other size, over more steps) gives the times."""
    scale = run["compute_s"] / p.compute_s
    return replace(p, forward_s=p.forward_s * scale, backward_s=p.backward_s * scale,
                   optimizer_s=run["optimizer_s"], data_s=run["data_s"], cv=run["cv"])


def predicted_points(scale: ScaleConfig, mode: str, profiles: Profiles, cluster: Cluster,
                     peak: Peak, measured: Mapping[int, MeasuredAllReduce] | None = None) -> list[Point]:
    """The model's step at every size to predict; sizes a strong global batch does not split
    over are left out."""
    global_batch = profiles.fixed_batches[mode]
    sizes = [n for n in scale.sizes_to_predict() if mode == "weak" or global_batch % n == 0]
    one_worker_batch = per_worker_batch(profiles.fixed_batches, mode, 1)
    base = profiles.profile(one_worker_batch, mode)
    one_worker_step = predict_step(base, cluster, 1).step_s
    # A node of this machine is the whole of it, with no wider network to compare against; and
    # below one full node no row has a node baseline, so none is profiled for it.
    node = cluster.gpus_per_node if cluster.device else None
    node_rate = None
    if node is not None and node <= max(sizes) and (mode == "weak" or global_batch % node == 0):
        node_batch = per_worker_batch(profiles.fixed_batches, mode, node)
        node_step = predict_step(profiles.profile(node_batch, mode), cluster, node, measured).step_s
        node_rate = node * node_batch / node_step
    points = []
    for n in sizes:
        batch = per_worker_batch(profiles.fixed_batches, mode, n)
        profile = profiles.profile(batch, mode)
        pred = predict_step(profile, cluster, n, measured)
        varied = {key: predict_step(profile, c, n, measured).step_s
                  for key, c in varied_clusters(profile, cluster).items()}
        state = profiles.state_model().state_bytes(profile.shard, n, profiles.params(profile))
        points.append(Point(mode=mode, kind="predicted", world_size=n, batch_per_worker=batch,
                            step_time_s=pred.step_s, one_worker_rate=one_worker_batch / one_worker_step,
                            flops_per_sample=base.flops_per_sample, peak=peak, cluster=cluster.name,
                            compute_s=pred.own_compute_s, comm_exposed_s=pred.rank_exposed_s,
                            comm_total_s=pred.comm_s, node_size=node, one_node_rate=node_rate,
                            varied_step_s=varied, state_bytes=state))
    return points


def measured_points(scale: ScaleConfig, mode: str, profiles: Profiles, flops_per_sample: float,
                    peak: Peak) -> list[Point]:
    """One point per measured size of ``mode``; none when its one-worker run was not measured."""
    fixed_batches, measured = profiles.fixed_batches, profiles.measured
    if (mode, 1) not in measured:
        return []
    one_worker_batch = per_worker_batch(fixed_batches, mode, 1)
    one_worker_rate = one_worker_batch / measured[(mode, 1)]["step_time_s"]
    points = []
    for n in scale.world_sizes:
        m = measured[(mode, n)]
        points.append(Point(mode=mode, kind="measured", world_size=n,
                            batch_per_worker=per_worker_batch(fixed_batches, mode, n),
                            step_time_s=m["step_time_s"], one_worker_rate=one_worker_rate,
                            flops_per_sample=flops_per_sample, peak=peak, cluster="this machine",
                            step_time_p90_s=m["step_time_p90_s"], step_time_pass_range=m.get("pass_range"),
                            compute_s=m["compute_s"],
                            comm_exposed_s=m["comm_exposed_s"], data_s=m["data_s"],
                            state_bytes=m.get("state_bytes_per_worker")))
    return points


def study_rows(scale: ScaleConfig, profiles: Profiles, cluster: Cluster, predicted_peak: Peak,
               measured_peak: Peak, measured: Mapping[int, MeasuredAllReduce] | None = None) -> list[dict]:
    """Every mode's predicted and measured rows, sorted by (mode, kind, world size). Both kinds
    count a sample's FLOPs from the same one-worker profile; ``measured``: all-reduce times
    measured on the cluster, by world size."""
    points = []
    for mode in scale.modes:
        points += predicted_points(scale, mode, profiles, cluster, predicted_peak, measured)
        one_worker_batch = per_worker_batch(profiles.fixed_batches, mode, 1)
        flops = profiles.profile(one_worker_batch, mode).flops_per_sample
        points += measured_points(scale, mode, profiles, flops, measured_peak)
    rows = [p.row() for p in points]
    rows.sort(key=lambda r: (r["mode"], r["kind"], r["world_size"]))
    return rows


def model_error(rows: list[dict]) -> dict[str, float]:
    """Predicted over measured step time, minus 1, at every measured (mode, size)."""
    predicted = {(r["mode"], r["world_size"]): r for r in rows if r["kind"] == "predicted"}
    return {f"{r['mode']}-n{r['world_size']}":
            predicted[(r["mode"], r["world_size"])]["step_time_s"] / r["step_time_s"] - 1
            for r in rows if r["kind"] == "measured"}


def error_drift(rows: list[dict]) -> dict[str, float]:
    """At every measured (mode, size) whose passes were repeated: how far the machine alone can
    move that size's model error, the mean of the pass ranges at one worker (which every
    prediction of the mode starts from) and at that size. An error inside it does not tell the
    model from the machine's drift."""
    ranges = {(r["mode"], r["world_size"]): r.get("step_time_pass_range")
              for r in rows if r["kind"] == "measured"}
    out = {}
    for (mode, n), here in ranges.items():
        one = ranges.get((mode, 1))
        if here is not None and one is not None:
            out[f"{mode}-n{n}"] = (one + here) / 2
    return out
