"""Run a scaling study: train at each world size through the launcher, profile one worker,
calibrate the all-reduce, model every size, and write the report.

The driver is one process. Every measured point is a separate, real job started exactly as
``ddtrain-launch`` starts a user's (``measure.Launcher``), so what is measured is what users run.
``run_study`` reads as its steps: set up this machine, measure, calibrate the network, build the
model's cluster, profile, make the rows, and write the report.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import shlex
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ddtrain.comm.shards import SHARD_MODES
from ddtrain.config import TrainConfig
from ddtrain.launcher.cores import usable_cpus
from ddtrain.launcher.hostfile import HostfileError, ranks_per_node, read_hostfile
from ddtrain.perf.peak import Peak, datasheet_peak_for, match_device, resolve_peak
from ddtrain.scaling.cluster_file import cluster_yaml, write_cluster_file
from ddtrain.scaling.config import ScaleConfig
from ddtrain.scaling.measure import (
    Launcher,
    StudyError,
    TrainingRuns,
    calibrate_allreduce,
    measure_node_slowdown,
)
from ddtrain.scaling.memory import StateModel
from ddtrain.scaling.model import Cluster, MeasuredAllReduce
from ddtrain.scaling.report import format_sensitivity, format_table, write_report
from ddtrain.scaling.rows import Profiles, error_drift, model_error, study_rows

log = logging.getLogger("ddtrain")


@dataclass(frozen=True)
class Machine:
    """Where the study runs: its device, usable CPUs, threads per worker and peak per worker."""

    device: torch.device
    cpus: int
    threads: int  # intra-op threads per worker; 0 on GPUs (the trainer's own choice)
    peak: Peak
    # Ranks per node from scale.hostfile (the first node's; mpirun fills nodes in order), or
    # None: every worker runs on this machine.
    node_ranks: int | None = None

    def ranks_on_a_node(self, n: int) -> int:
        return ranks_on_a_node(self.node_ranks, n)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def ranks_on_a_node(node_ranks: int | None, n: int) -> int:
    """How many of ``n`` workers share the busiest node (``node_ranks`` None: all of them)."""
    return n if node_ranks is None else min(n, node_ranks)


def setup_machine(cfg: TrainConfig, scale: ScaleConfig) -> Machine:
    """Pick the device, fix the threads per worker (in this process too, for the profiles) and
    resolve the peak a worker is measured against."""
    cuda = torch.cuda.is_available() and cfg.trainer.device != "cpu"
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    cpus = usable_cpus()
    node_ranks = node_ranks_of(scale)
    sharing = ranks_on_a_node(node_ranks, max(scale.world_sizes))
    # On CPU a "worker" is a fixed share of a node's cores, the same at every size; otherwise the
    # one-rank run would get all cores and every multi-rank run would look inefficient by
    # construction. With a hostfile, the nodes are taken to have this node's cores.
    threads = 0 if cuda else (scale.threads_per_rank or max(1, cpus // sharing))
    if threads:
        torch.set_num_threads(threads)
    peak = resolve_peak(device, cfg.trainer.precision, scale.peak)
    log.info("peak per worker: %s [%s]", peak.label, peak.source)
    return Machine(device, cpus, threads, peak, node_ranks)


def node_ranks_of(scale: ScaleConfig) -> int | None:
    """Ranks per node of ``scale.hostfile`` (None without one); a study error if it is unreadable
    or too small for the largest size."""
    if not scale.hostfile:
        return None
    try:
        nodes = read_hostfile(scale.hostfile)
        placed = ranks_per_node(nodes, max(scale.world_sizes))
    except HostfileError as e:
        raise StudyError(f"scale.hostfile: {e}") from None
    log.info("hostfile %s: %d node(s); %d workers fill %s rank(s) per node", scale.hostfile, len(nodes),
             max(scale.world_sizes), "+".join(map(str, placed)))
    return placed[0]


def fixed_batches(cfg: TrainConfig, scale: ScaleConfig) -> dict[str, int]:
    """The batch each mode holds fixed: per worker (weak) or global (strong)."""
    batch = cfg.data.batch_size
    return {mode: (batch if mode == "weak" else scale.strong_global_batch(batch)) for mode in scale.modes}


@dataclass(frozen=True)
class Study:
    """One study's inputs and what every step shares: where it runs, how it launches."""

    cfg: TrainConfig
    scale: ScaleConfig
    cluster: Cluster  # as configured: a preset, or "local" (calibrated here)
    study_dir: Path
    overrides: list[str]  # what every training job of the study gets
    machine: Machine
    launcher: Launcher
    batches: dict[str, int]  # per mode, see fixed_batches


@dataclass(frozen=True)
class ModelInputs:
    """What the model predicts with: the cluster, the peak of the device predicted for, the
    factor carrying compute times there, the all-reduce fit and the one-worker profiles."""

    cluster: Cluster
    peak: Peak
    transfer: float
    fit: dict | None
    measured: dict[int, MeasuredAllReduce]  # all-reduce times measured here, by world size
    profiles: Profiles
    device_model: str  # measured | roofline
    device_model_why: str


def measure(study: Study) -> dict[tuple[str, int], dict]:
    """Every measured (mode, size), pooled over its repeats; nothing when only predicting."""
    if study.scale.predict_only:
        return {}
    runs = TrainingRuns(study.scale, study.launcher, study.overrides, study.machine.threads, study.study_dir)
    return runs.measure_all(study.batches)


def calibrate_network(study: Study) -> dict | None:
    """The all-reduce fitted on this machine at the largest measured size (``fit``), and, when
    that size spans nodes that hold several workers each, inside one node too (``inside``);
    None when nothing is measured or only one worker is."""
    scale, machine = study.scale, study.machine
    n_max = max(scale.world_sizes)
    if scale.predict_only or n_max == 1:
        return None
    log.info("calibrating all-reduce at %d workers (1 KiB .. %g MiB) ...", n_max, scale.allreduce_max_mb)
    fit = calibrate_allreduce(scale, study.launcher, n_max, study.study_dir, machine.device.type)
    _log_fit(fit)
    g = machine.ranks_on_a_node(n_max)
    if machine.node_ranks is not None and 1 < g < n_max:
        log.info("calibrating all-reduce inside one node, %d workers ...", g)
        fit["inside"] = calibrate_allreduce(scale, study.launcher, g, study.study_dir, machine.device.type,
                                            name="allreduce_node")
        _log_fit(fit["inside"])
    return fit


def _log_fit(fit: dict) -> None:
    log.info("  alpha %.1f us, bus bandwidth %.3f GB/s", (fit["fit"]["alpha_s"] or 0) * 1e6,
             fit["fit"]["bus_bw_GBps"] or float("nan"))


def _fitted(fit: dict, n: int, base: Cluster) -> tuple[float, float]:
    """(bus bandwidth GB/s, latency per ring step in us) of an all-reduce fit at ``n`` workers:
    the fitted per-call latency spread over the ring's 2(n-1) steps, so that the ring formula
    reproduces the fit at n."""
    return fit["bus_bw_GBps"] or base.intra_bw_GBps, (fit["alpha_s"] or 0.0) / (2 * (n - 1)) * 1e6


def local_cluster(base: Cluster, fit: dict, n: int, node_ranks: int | None = None) -> Cluster:
    """This machine (or the hostfile's nodes) as a cluster, from the all-reduce fits.

    Without a hostfile, or when all ``n`` workers fit on one node, one fit serves both levels.
    Across nodes the fit at ``n`` gives the network, and the fit inside one node (``fit["inside"]``)
    the node's own links; a node of one worker has none, so its links are the network's."""
    bw, lat = _fitted(fit["fit"], n, base)
    if node_ranks is None or node_ranks >= n:
        g = base.gpus_per_node if node_ranks is None else node_ranks
        return replace(base, gpus_per_node=g, intra_bw_GBps=bw, inter_bw_GBps=bw, intra_latency_us=lat,
                       inter_latency_us=lat)
    inside = fit.get("inside")
    intra_bw, intra_lat = _fitted(inside["fit"], node_ranks, base) if inside and node_ranks > 1 else (bw, lat)
    return replace(base, gpus_per_node=node_ranks, intra_bw_GBps=intra_bw, intra_latency_us=intra_lat,
                   inter_bw_GBps=bw, inter_latency_us=lat,
                   description=f"the hostfile's nodes, {node_ranks} worker(s) each, calibrated by the "
                               "all-reduce microbenchmark")


def measured_allreduces(cluster: Cluster, fit: dict | None) -> dict[int, MeasuredAllReduce]:
    """The calibrations' measured times, by world size, for the model to use at those sizes;
    none for a preset (its figures describe another cluster)."""
    if fit is None or cluster.device:
        return {}
    out = {}
    for run in (fit, fit.get("inside")):
        if run is None:
            continue
        n = run["n"]
        bw = cluster.inter_bw_GBps if n > cluster.gpus_per_node else cluster.intra_bw_GBps
        points = tuple(sorted((r["size_bytes"], r["time_s"]) for r in run["rows"]))
        lost = tuple(sorted((r["size_bytes"], r["compute_lost"]) for r in run["rows"]
                            if r.get("compute_lost") is not None))
        cpu = tuple(sorted((r["size_bytes"], r["cpu_s"]) for r in run["rows"] if r.get("cpu_s") is not None))
        beside = tuple(sorted((r["size_bytes"], r["beside_s"]) for r in run["rows"]
                              if r.get("beside_s") is not None))
        out[n] = MeasuredAllReduce(n, points, bw, lost if len(lost) == len(points) else (),
                                   cpu if len(cpu) == len(points) else (),
                                   beside if len(beside) == len(points) else ())
    return out


def model_cluster(study: Study, fit: dict | None) -> Cluster:
    """The cluster the model predicts for: a preset as given, or this machine as calibrated."""
    if study.cluster.device:
        return study.cluster
    if fit is None:
        raise StudyError("cluster=local needs a measured all-reduce: measure at least 2 workers "
                         "(e.g. scale.world_sizes=[1,2]) or pick a preset such as cluster=dgx_h100")
    scale, machine = study.scale, study.machine
    n_max = max(scale.world_sizes)
    local = local_cluster(study.cluster, fit, n_max, machine.node_ranks)
    if machine.cuda:
        return local  # workers with a GPU each do not share compute
    # CPU workers on one node share its cores, memory bandwidth and caches. The probe is launched
    # as the jobs are (with scale.hostfile, across the same nodes, in the same placement), so it
    # measures what the workers of a node do to each other wherever they run.
    log.info("measuring node sharing: %d workers, each step together and alone ...", n_max)
    slowdown, optimizer = measure_node_slowdown(study.cfg, study.launcher, n_max, study.cfg.data.batch_size,
                                                machine.threads, study.study_dir, scale.repeats, scale.steps)
    log.info("  compute is %.3fx slower and the optimizer step %.3fx with %d workers on this node",
             slowdown, optimizer, n_max)
    return replace(local, node_slowdown=slowdown, optimizer_slowdown=optimizer)


def choose_device_model(choice: str, cluster_device: str, local_gpu: str) -> tuple[str, str]:
    """(measured | roofline, why): how the cluster's device gets its one-worker times.
    ``choice``: scale.device_model; ``local_gpu``: this machine's GPU name ("" for none)."""
    if not cluster_device:
        return "measured", "the cluster is this machine"
    if choice != "auto":
        return choice, f"scale.device_model={choice}"
    here = match_device(local_gpu) if local_gpu else None
    if here is not None and here == match_device(cluster_device):
        return "measured", f"this machine's GPU is the cluster's ({here}): measured here"
    what = f"a {local_gpu}" if local_gpu else "a CPU"
    return "roofline", f"this machine ({what}) is not the cluster's {cluster_device}"


def device_model_for(study: Study) -> tuple[str, str]:
    machine = study.machine
    local_gpu = torch.cuda.get_device_name(machine.device) if machine.cuda else ""
    return choose_device_model(study.scale.device_model, study.cluster.device, local_gpu)


def predicted_peak(study: Study, device_model: str) -> tuple[Peak, float]:
    """(the peak of the device predicted for, the factor that carries compute times there).
    A measured profile is carried to another device at the same fraction of peak as measured
    here; the roofline's times are the device's own (factor 1)."""
    measured_peak = study.machine.peak
    if not study.cluster.device:
        return measured_peak, 1.0
    target = datasheet_peak_for(study.cluster.device, study.cfg.trainer.precision)
    return target, (1.0 if device_model == "roofline" else measured_peak.flops / target.flops)


def model_inputs(study: Study, measured: dict[tuple[str, int], dict], fit: dict | None) -> ModelInputs:
    """The cluster, peak and profiles the model runs on. CPU workers that fill every core leave
    none for the communication threads: gloo's all-reduce then runs in the compute's time slices
    instead of beside it, so nothing hides (a GPU's collectives run on their own engines and
    SMs, and overlap as modelled)."""
    cluster = model_cluster(study, fit)
    device_model, why = device_model_for(study)
    peak, transfer = predicted_peak(study, device_model)
    machine = study.machine
    sharing = machine.ranks_on_a_node(max(study.scale.world_sizes))
    no_spare_core = (not machine.cuda and not study.cluster.device
                     and machine.threads * sharing >= machine.cpus)
    # This machine's CPU workers shard over Gloo: the shard exchange and its inboxes.
    gloo_here = not machine.cuda and not study.cluster.device
    profiles = Profiles(study.cfg, machine.device, study.batches, measured, transfer=transfer,
                        overlap=not no_spare_core, given=study.scale.given,
                        roofline_device=cluster.device if device_model == "roofline" else "",
                        gloo=gloo_here)
    log.info("device model for %s: %s (%s)", cluster.device or "this machine", device_model, why)
    return ModelInputs(cluster, peak, transfer, fit, measured_allreduces(cluster, fit), profiles,
                       device_model, why)


def per_step_by_run(scale: ScaleConfig, measured: dict[tuple[str, int], dict]) -> dict[str, dict]:
    """Every measured run's pooled per-step timings, named ``<mode>-n<size>``."""
    return {f"{mode}-n{n}": measured[(mode, n)]["per_step"]
            for mode in scale.modes if (mode, 1) in measured for n in scale.world_sizes}


def study_meta(study: Study, model: ModelInputs, errors: dict[str, float],
               drift: dict[str, float] | None = None) -> dict:
    """What the report records besides its rows: how, where and against what it was made."""
    machine = study.machine
    return {
        "command": shlex.join(["ddtrain-scale", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "torch": torch.__version__,
        "device": (torch.cuda.get_device_name(0) if machine.cuda
                   else f"cpu, {machine.threads} thread(s) per worker"),
        "peak_measured_here": asdict(machine.peak), "peak_predicted_for": asdict(model.peak),
        "compute_transfer_factor": model.transfer,
        "cluster": asdict(model.cluster), "scale": asdict(study.scale), "train_overrides": study.overrides,
        "allreduce_fit": model.fit["fit"] if model.fit else None,
        "allreduce_fit_inside_node": (model.fit or {}).get("inside", {}).get("fit"),
        "profiles": {str(b): asdict(p) for b, p in model.profiles.by_batch.items()},
        "predicted_over_measured_step_time_minus_1": errors,
        "error_drift": drift,
        "jitter": jitter_used(model),
        "device_model": device_model_used(model),
    }


def device_model_used(model: ModelInputs) -> dict:
    """Which device model made the predicted rows' compute times, why, and (roofline) from what."""
    out = {"name": model.device_model, "why": model.device_model_why}
    runs = model.profiles.roofline_runs
    if runs:
        any_run = next(iter(runs.values()))
        out |= {"device": any_run.device.name, "source": any_run.device.source,
                "efficiency": any_run.device.efficiency, "per_op_s": any_run.device.per_op_s,
                "flops_source": any_run.flops_source,
                "persistent_recurrences_by_batch": {str(b): f"{r.fused_regions} of {r.regions}"
                                                    for b, r in runs.items()}}
    return out


def jitter_used(model: ModelInputs) -> dict:
    """The step-time jitter (cv) the straggler factor used, per profiled batch, and where it
    came from: the cluster's own figure, or this machine's one-worker profile."""
    cluster = model.cluster
    if cluster.cv is not None:
        return {"source": f"cluster {cluster.name}: {cluster.cv_source or 'cluster.cv'}",
                "cv_by_batch": {str(b): cluster.cv for b in model.profiles.by_batch}}
    return {"source": "measured here: robust spread (IQR/1.349/median) of the one-worker profile's steps",
            "cv_by_batch": {str(b): p.cv for b, p in model.profiles.by_batch.items()}}


def devices_used(rows: list[dict], meta: dict) -> list[str]:
    """For each kind of row: the device, the peak its fraction is of, and the device model, so
    the table never leaves a reader to guess which device a number speaks of."""
    lines = []
    peak_here = meta["peak_measured_here"]
    if any(r["kind"] == "measured" for r in rows):
        lines.append(f"measured rows: {meta['device']} on this machine; peak {peak_here['device']} "
                     f"{peak_here['flops'] / 1e12:.3g} TFLOP/s ({peak_here['source']}); timed runs")
    if any(r["kind"] == "predicted" for r in rows):
        cluster, peak = meta["cluster"], meta["peak_predicted_for"]
        given = meta["scale"]["given"]
        if given["step_time_s"] or given["samples_per_s"]:
            rate = (f"{given['step_time_s'] * 1e3:.4g} ms per step" if given["step_time_s"]
                    else f"{given['samples_per_s']:.4g} samples/s")
            shape = ("the roofline" if meta["device_model"]["name"] == "roofline"
                     else "this machine's profile")
            model = (f"the given one-worker rate, {rate} ({given['source'] or 'no source given'}), "
                     f"other batches and the forward:backward split as {shape} gives them")
        elif meta["device_model"]["name"] == "roofline":
            used = meta["device_model"]
            model = (f"roofline: one step's op counts on {used['device']}'s datasheet roofs at its "
                     f"generation's efficiencies ({used['why']})")
        elif cluster["device"]:
            model = (f"this machine's one-worker profile carried at its measured fraction of peak "
                     f"(compute times x {meta['compute_transfer_factor']:.3g}; "
                     f"{meta['device_model']['why']})")
        else:
            model = "this machine's one-worker profile, as measured"
        lines.append(f"predicted rows: cluster {cluster['name']} ({cluster['device'] or 'this machine'}); "
                     f"peak {peak['device']} {peak['flops'] / 1e12:.3g} TFLOP/s ({peak['source']}); "
                     f"device model: {model}")
    return lines


def report(study: Study, rows: list[dict], meta: dict, per_step: dict, cluster_name: str) -> dict:
    """Write the report files, print the table, and log the model's error."""
    title = (f"ddtrain scaling: {study.cfg.model.name}, {', '.join(study.scale.modes)} scaling, "
             f"cluster {cluster_name}")
    paths = write_report(study.study_dir, rows, meta, per_step, title=title)
    print("\n".join([format_table(rows, study.scale.baseline), *format_sensitivity(rows),
                     *devices_used(rows, meta), *format_largest(meta, study.scale.memory_gb)]), flush=True)
    jitter = meta["jitter"]
    log.info("step-time jitter used: cv %s (%s)", ", ".join(
        f"{v:.3f} at batch {b}" for b, v in jitter["cv_by_batch"].items()), jitter["source"])
    errors = meta["predicted_over_measured_step_time_minus_1"]
    if errors:
        log.info("model vs measured step time: %s", format_errors(errors, meta.get("error_drift") or {}))
    return {"rows": rows, "meta": meta, "paths": paths}


def format_errors(errors: dict[str, float], drift: dict[str, float]) -> str:
    """``weak-n2 +12.3% (drift 19.5%: unresolved)``: each error, and beside it, where the passes
    were repeated, how far the machine's drift alone moves it; an error inside that is unresolved."""
    parts = []
    for key, err in errors.items():
        text = f"{key} {err * 100:+.1f}%"
        if key in drift and not key.endswith("-n1"):
            verdict = "unresolved" if abs(err) <= drift[key] else "beyond it"
            text += f" (drift {drift[key] * 100:.1f}%: {verdict})"
        parts.append(text)
    return ", ".join(parts)


def run_study(cfg: TrainConfig, scale: ScaleConfig, cluster: Cluster, study_dir: Path,
              overrides: list[str]) -> dict:
    """The whole study; returns its rows, its meta and the paths of its report files."""
    study_dir.mkdir(parents=True, exist_ok=True)
    study = Study(cfg, scale, cluster, study_dir, overrides, setup_machine(cfg, scale), Launcher(scale),
                  fixed_batches(cfg, scale))
    measured = measure(study)
    model = model_inputs(study, measured, calibrate_network(study))
    rows = study_rows(scale, model.profiles, model.cluster, model.peak, study.machine.peak,
                      model.measured)
    errors = {} if cluster.device else model_error(rows)
    meta = study_meta(study, model, errors, error_drift(rows) if errors else {})
    if scale.memory_gb:
        meta["largest_model_params"] = largest_models(scale, model.profiles.state_model())
    if scale.write_cluster:
        write_calibrated_cluster(study, model, meta)
    return report(study, rows, meta, per_step_by_run(scale, measured), model.cluster.name)


def largest_models(scale: ScaleConfig, state: StateModel) -> dict[str, dict[str, int]]:
    """Per shard mode and size: the most parameters whose training state fits in
    ``scale.memory_gb`` per worker (activations not counted)."""
    memory = scale.memory_gb * 1e9
    return {shard: {str(n): state.largest_model(memory, shard, n) for n in scale.sizes_to_predict()}
            for shard in SHARD_MODES}


def format_largest(meta: dict, memory_gb: float) -> list[str]:
    table = meta.get("largest_model_params")
    if not table:
        return []
    sizes = list(next(iter(table.values())))
    lines = [f"largest model whose training state fits in {memory_gb:g} GB per worker (parameters; "
             "activations not counted):",
             "  workers    " + "".join(f"{n:>10}" for n in sizes)]
    for shard, by_n in table.items():
        lines.append(f"  {shard:<10} " + "".join(f"{by_n[n] / 1e9:>9.2f}B" for n in sizes))
    return lines


def write_calibrated_cluster(study: Study, model: ModelInputs, meta: dict) -> Path:
    """``scale.write_cluster``: the calibrated cluster as a preset file, for predicting these
    nodes at sizes they do not have (``scale.cluster_file`` or ``configs/cluster/``)."""
    path = Path(study.scale.write_cluster)
    device = (match_device(torch.cuda.get_device_name(0)) or "") if study.machine.cuda else ""
    cvs = meta["jitter"]["cv_by_batch"]
    cv = cvs.get(str(study.batches[study.scale.modes[0]]))
    text = cluster_yaml(model.cluster, name=path.stem, device=device, cv=cv,
                        provenance=f"{meta['command']} on {meta['host']}, {meta['date']}",
                        inside_measured=bool(model.fit and model.fit.get("inside")))
    written = write_cluster_file(path, text)
    log.info("cluster written: %s (use it with scale.cluster_file=%s, or copy it into configs/cluster/)",
             written, written)
    return written
