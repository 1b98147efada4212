"""The ``scale`` and ``cluster`` sections of ``ddtrain-scale``'s config, typed and validated.

The rest of the config is a normal training config (same groups as ``ddtrain``) and goes
through ``ddtrain.config.from_mapping``, so a study trains exactly what ``ddtrain`` would.
"""

from __future__ import annotations

import dataclasses
import io
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ddtrain.config import ConfigError, TrainConfig, build_section, check_choice, check_positive, from_mapping
from ddtrain.errors import one_line
from ddtrain.launcher.flavour import FLAVOURS
from ddtrain.launcher.policy import LAUNCHERS
from ddtrain.scaling.model import Cluster

MODES = ("weak", "strong", "both")
DEVICE_MODELS = ("auto", "measured", "roofline")


@dataclass(frozen=True)
class GivenRate:
    """One worker's rate on the cluster's device, from a source the user trusts (a published
    single-GPU figure, or their own run), at the study's one-worker batch. Zero: not given."""

    step_time_s: float = 0.0
    samples_per_s: float = 0.0
    fwd_bwd_ratio: float = 0.0  # forward time / backward time (0: the profile's own split)
    source: str = ""  # where the figure comes from, for the report

    @property
    def given(self) -> bool:
        return self.step_time_s > 0 or self.samples_per_s > 0

    def step_time(self, batch: int) -> float:
        return self.step_time_s if self.step_time_s > 0 else batch / self.samples_per_s


@dataclass(frozen=True)
class ScaleConfig:
    world_sizes: tuple[int, ...] = (1, 2)
    mode: str = "weak"  # weak: per-worker batch fixed | strong: global batch fixed | both
    global_batch: int = 0  # strong: 0 = data.batch_size x max(world_sizes)
    warmup_steps: int = 5  # per world size, excluded from every statistic
    steps: int = 20  # measured steps per run, after warm-up
    repeats: int = 3  # runs per world size, interleaved across sizes (shared machines drift)
    predict_to: int = 0  # also model powers of two up to this many workers (0: measured sizes only)
    predict_only: bool = False  # run no training; model every size from a one-worker profile
    launcher: str = "mpirun"  # mpirun | srun, with ddtrain-launch's flags for either
    mpi: str = "auto"  # mpirun's flavour: auto (asks mpirun --version) | openmpi | mpich | intel
    hostfile: str = ""  # mpirun --hostfile (empty: this machine)
    launcher_args: tuple[str, ...] = ()  # extra launcher flags, e.g. ["--mca","btl_tcp_if_include","eth0"]
    threads_per_rank: int = 0  # CPU: 0 = cores // max(world_sizes), the same at every size
    peak: str = "auto"  # auto | measure | a peak-table device key (see ddtrain/perf/peak.py)
    allreduce_max_mb: float = 64.0  # largest message of the all-reduce calibration
    # Seconds of timing per message size in that calibration. Its times and compute shares set
    # every predicted point's communication, so on a shared or noisy machine give it more: at the
    # default a size of tens of MiB is the median of a few all-reduces, which one slow spell moves.
    allreduce_budget_s: float = 0.2
    timeout_s: float = 900.0  # per launched job
    # A cluster description of one's own (YAML, the keys of a configs/cluster/ preset); it
    # replaces the cluster section. Relative to the directory ddtrain-scale starts in.
    cluster_file: str = ""
    # Write the cluster this study calibrated (its nodes, links and jitter) as a preset YAML here.
    write_cluster: str = ""
    # A one-worker rate on the cluster's device to predict from, instead of this machine's
    # profile carried there at its fraction of peak.
    given: GivenRate = field(default_factory=GivenRate)
    baseline: str = "1"  # efficiency shown first: against 1 worker, or against one full node (node)
    # Where the cluster device's one-worker times come from: auto | measured | roofline
    # (ddtrain/scaling/device_model.py); auto measures when the cluster's GPU is this machine's.
    device_model: str = "auto"
    # Device memory per worker, GB: the report gives the largest model whose training state fits
    # at each size under comm.shard none / optimizer / gradients (0: no such table).
    memory_gb: float = 0.0

    @property
    def modes(self) -> tuple[str, ...]:
        return ("weak", "strong") if self.mode == "both" else (self.mode,)

    def sizes_to_predict(self) -> list[int]:
        sizes = set(self.world_sizes)
        n = 1
        while n <= self.predict_to:
            sizes.add(n)
            n *= 2
        if self.predict_to:
            sizes.add(self.predict_to)
        return sorted(sizes)

    def strong_global_batch(self, per_worker: int) -> int:
        return self.global_batch or per_worker * max(self.world_sizes)


def parse_scale(raw: Mapping[str, Any]) -> ScaleConfig:
    if isinstance(raw, Mapping) and isinstance(raw.get("baseline"), int):
        raw = {**raw, "baseline": str(raw["baseline"])}  # scale.baseline=1 arrives as a number
    scale = build_section(ScaleConfig, raw, "scale")
    check_choice("scale.baseline", scale.baseline, ("1", "node"))
    check_choice("scale.device_model", scale.device_model, DEVICE_MODELS)
    if not scale.world_sizes:
        raise ConfigError("scale.world_sizes is empty; write e.g. scale.world_sizes=[1,2,4]")
    for n in scale.world_sizes:
        if n < 1:
            raise ConfigError(f"scale.world_sizes contains {n}; every size must be >= 1")
    scale = dataclasses.replace(scale, world_sizes=tuple(sorted(set(scale.world_sizes))))
    check_choice("scale.mode", scale.mode, MODES)
    check_choice("scale.launcher", scale.launcher, LAUNCHERS)
    check_choice("scale.mpi", scale.mpi, ("auto", *FLAVOURS))
    if scale.launcher == "srun" and scale.hostfile:
        raise ConfigError(f"scale.hostfile={scale.hostfile!r} is for mpirun; under srun the allocation "
                          "decides the nodes; fix: leave scale.hostfile out")
    if not scale.predict_only and 1 not in scale.world_sizes:
        raise ConfigError(
            f"scale.world_sizes={list(scale.world_sizes)} lacks 1; efficiency is measured against one "
            "worker, so add 1 (e.g. scale.world_sizes=[1,2,4])"
        )
    _check_given(scale.given)
    if scale.steps < 3:
        raise ConfigError(f"scale.steps={scale.steps} must be >= 3 (medians and p90 need a few steps)")
    check_positive("scale.warmup_steps", scale.warmup_steps, zero_ok=True)
    check_positive("scale.repeats", scale.repeats)
    check_positive("scale.predict_to", scale.predict_to, zero_ok=True)
    check_positive("scale.global_batch", scale.global_batch, zero_ok=True)
    check_positive("scale.threads_per_rank", scale.threads_per_rank, zero_ok=True)
    check_positive("scale.allreduce_max_mb", scale.allreduce_max_mb)
    check_positive("scale.allreduce_budget_s", scale.allreduce_budget_s)
    check_positive("scale.timeout_s", scale.timeout_s)
    return scale


def _check_given(g: GivenRate) -> None:
    check_positive("scale.given.step_time_s", g.step_time_s, zero_ok=True)
    check_positive("scale.given.samples_per_s", g.samples_per_s, zero_ok=True)
    check_positive("scale.given.fwd_bwd_ratio", g.fwd_bwd_ratio, zero_ok=True)
    if g.step_time_s > 0 and g.samples_per_s > 0:
        raise ConfigError("scale.given.step_time_s and scale.given.samples_per_s are both set; give one "
                          "(samples/s = the one-worker batch / step time)")
    if g.fwd_bwd_ratio and not g.given:
        raise ConfigError("scale.given.fwd_bwd_ratio is set but no rate is; give scale.given.step_time_s "
                          "or scale.given.samples_per_s too")


def parse_cluster(raw: Mapping[str, Any]) -> Cluster:
    """A cluster description, type-checked like the training config; Cluster checks ranges, and
    the device must be one the peak table knows, since predictions are held to its datasheet."""
    try:
        cluster = build_section(Cluster, raw, "cluster")
    except ValueError as e:  # ConfigError is one; Cluster's own range checks raise ValueError
        raise ConfigError(str(e)) from None
    if cluster.device:
        from ddtrain.perf.peak import PEAK_TABLE, match_device  # imports torch: only when needed

        if match_device(cluster.device) is None:
            raise ConfigError(f"cluster.device={cluster.device!r} has no datasheet peak; choose one of: "
                              f"{', '.join(PEAK_TABLE)}, or \"\" for the machine the study runs on")
    return cluster


def _cluster_keys() -> str:
    return ", ".join(f.name for f in dataclasses.fields(Cluster))


def _yaml_problem(e: yaml.YAMLError, text: str) -> str:
    """Where in the file a YAML error is, and what it is, as one line."""
    mark = getattr(e, "problem_mark", None)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {e.problem}"
    if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow
        return f"line {text.count(chr(10), 0, e.position) + 1}: character #x{e.character:04x}: {e.reason}"
    return one_line(e, typed=False)


def _cluster_mapping(text: str, where: str, path: Path) -> dict:
    """The file's keys and values, read as Hydra reads a preset (OmegaConf's YAML rules: ``4e2``
    is a number, a key given twice is an error)."""
    try:
        top = yaml.compose(text, Loader=yaml.SafeLoader)  # the shape, before any value is built
        if not isinstance(top, yaml.MappingNode):
            what = ("is empty" if top is None else "holds a list" if isinstance(top, yaml.SequenceNode)
                    else f"holds the single value {top.value!r}")
            raise ConfigError(f"{where}: {path} {what}, not a mapping of cluster keys; fix: write one "
                              f"'key: value' line per key; a cluster takes: {_cluster_keys()}")
        values = OmegaConf.to_container(OmegaConf.load(io.StringIO(text)), resolve=True)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: {path} is not valid YAML: {_yaml_problem(e, text)}") from None
    except OmegaConfBaseException as e:  # an interpolation ${...} that does not resolve
        reason = one_line(e, typed=False)
        raise ConfigError(f"{where}: {path} has a ${{...}} that does not resolve ({reason}); fix: write the "
                          "value itself") from None
    # YAML keys may be numbers or booleans; as names they are simply unknown keys.
    return {str(k): v for k, v in values.items()}


def read_cluster_file(given: str, cwd: Path) -> tuple[Path, Cluster]:
    """The cluster that ``scale.cluster_file=given`` describes, and the file's absolute path.

    The file is a complete cluster section: the keys of a configs/cluster/ preset, checked as a
    preset's are. A relative path starts from ``cwd``. Every error is one line naming the file.
    """
    where = f"scale.cluster_file={given}"
    path = cwd / Path(given).expanduser()
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{where}: {path} does not exist (a relative path starts from the directory "
                          "ddtrain-scale runs in); fix: give the path of your cluster YAML file") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        # Read twice (before Hydra starts, then in the job), so a pipe would be empty the second time.
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise ConfigError(f"{where}: {path} is {kind}; fix: give the path of your cluster YAML file")
    try:
        text = path.read_text(encoding="utf-8")  # Hydra reads presets as UTF-8 too
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: {path} is not UTF-8 text (byte {e.start}); fix: save it as "
                          "UTF-8 YAML") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path}: {e.strerror}") from None
    raw = _cluster_mapping(text, where, path)
    try:
        return path, parse_cluster(raw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def parse_study(raw: Mapping[str, Any], cwd: Path | None = None) -> tuple[TrainConfig, ScaleConfig, Cluster]:
    """Validate a composed ``ddtrain-scale`` config: (training config, study, cluster).

    ``cwd``: the directory a relative ``scale.cluster_file`` starts from (default: this process's);
    the returned ScaleConfig holds the file's absolute path, so the study records which file it was.
    """
    raw = {k: v for k, v in raw.items() if k != "hydra"}
    scale = parse_scale(raw.pop("scale", {}) or {})
    section = raw.pop("cluster", {}) or {}  # the cluster group's choice, unless a file replaces it
    if scale.cluster_file:
        path, cluster = read_cluster_file(scale.cluster_file, Path.cwd() if cwd is None else cwd)
        scale = dataclasses.replace(scale, cluster_file=str(path))
    else:
        cluster = parse_cluster(section)
    cfg = from_mapping(raw)
    if "strong" in scale.modes:
        global_batch = scale.strong_global_batch(cfg.data.batch_size)
        bad = [n for n in scale.world_sizes if global_batch % n]
        if bad:
            raise ConfigError(
                f"strong scaling: the global batch {global_batch} does not split over {bad[0]} workers; set "
                "scale.global_batch to a multiple of every world size"
            )
    if scale.predict_only and not cluster.device and scale.cluster_file:
        raise ConfigError(
            f"scale.predict_only=true needs a cluster to predict for, but {scale.cluster_file} has "
            "device: \"\" (the machine the study runs on, calibrated from measured runs); fix: set its "
            "device to the workers' GPU, e.g. h100_sxm"
        )
    if scale.predict_only and not cluster.device:
        raise ConfigError(
            "scale.predict_only=true needs a cluster preset to predict for (e.g. cluster=dgx_h100); "
            "cluster=local is calibrated from measured runs"
        )
    if scale.memory_gb < 0:
        raise ConfigError(f"scale.memory_gb={scale.memory_gb} must be >= 0 (GB of device memory per worker; "
                          "0: no largest-model table)")
    if scale.write_cluster and (scale.predict_only or cluster.device):
        raise ConfigError(
            f"scale.write_cluster={scale.write_cluster} writes the cluster a study calibrates from its own "
            "runs, but this study models a preset (cluster.device set) or measures nothing "
            "(scale.predict_only); fix: run it with the default cluster=local and measured sizes, e.g. "
            "scale.world_sizes=[1,2] scale.hostfile=hosts")
    if scale.given.given and not cluster.device:
        raise ConfigError("scale.given is one worker's rate on the cluster's GPU, and this cluster is the "
                          "machine the study runs on; pick a preset (e.g. cluster=dgx_h100) or measure here")
    if scale.device_model == "roofline" and not cluster.device:
        raise ConfigError("scale.device_model=roofline needs a datasheet GPU to put on the roofline, and "
                          "cluster local is the machine the study runs on (measured here); pick a preset "
                          "(e.g. cluster=dgx_h100) or leave scale.device_model=auto")
    check_peak_names_this_device(scale.peak, cfg.trainer.device)
    return cfg, scale, cluster


def check_peak_names_this_device(peak: str, trainer_device: str, local_gpu: str | None = None) -> None:
    """``scale.peak=KEY`` sets the datasheet peak of the device the study runs on, so KEY must be
    that device: a CPU held to a GPU's datasheet would carry its profile to the cluster at a
    fraction of peak it never ran at. The device predicted for is ``cluster.device``.
    ``local_gpu``: the name of this machine's GPU (None: ask torch; "": none is used)."""
    if peak in ("auto", "measure"):
        return
    from ddtrain.perf.peak import PEAK_TABLE, match_device  # imports torch: only when needed

    if local_gpu is None:
        import torch

        used = torch.cuda.is_available() and trainer_device != "cpu"
        local_gpu = torch.cuda.get_device_name(0) if used else ""
    key = match_device(peak)
    if key is None:
        raise ConfigError(f"scale.peak={peak!r} is not allowed; choose auto, measure, or one of: "
                          f"{', '.join(PEAK_TABLE)}")
    here = match_device(local_gpu) if local_gpu else None
    if key != here:
        where = f"a {local_gpu}" if local_gpu else "the CPU"
        raise ConfigError(
            f"scale.peak={peak} is the datasheet of a {key}, but this study runs on {where}: the peak "
            "measured against is this device's own. Use scale.peak=auto or measure; the device "
            "predicted for is cluster.device (e.g. cluster=dgx_h100)")
