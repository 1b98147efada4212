"""The ``scale`` and ``cluster`` sections of ``ddtrain-scale``'s config, typed and validated.

The rest of the config is a normal training config (same groups as ``ddtrain``) and goes
through ``ddtrain.config.from_mapping``, so a study trains exactly what ``ddtrain`` would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ddtrain.config import ConfigError, TrainConfig, build_section, check_choice, check_positive, from_mapping
from ddtrain.launcher.flavour import FLAVOURS
from ddtrain.launcher.policy import LAUNCHERS
from ddtrain.scaling.model import Cluster

MODES = ("weak", "strong", "both")


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
    timeout_s: float = 900.0  # per launched job

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
    scale = build_section(ScaleConfig, raw, "scale")
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
    if scale.steps < 3:
        raise ConfigError(f"scale.steps={scale.steps} must be >= 3 (medians and p90 need a few steps)")
    check_positive("scale.warmup_steps", scale.warmup_steps, zero_ok=True)
    check_positive("scale.repeats", scale.repeats)
    check_positive("scale.predict_to", scale.predict_to, zero_ok=True)
    check_positive("scale.global_batch", scale.global_batch, zero_ok=True)
    check_positive("scale.threads_per_rank", scale.threads_per_rank, zero_ok=True)
    check_positive("scale.allreduce_max_mb", scale.allreduce_max_mb)
    check_positive("scale.timeout_s", scale.timeout_s)
    return scale


def parse_cluster(raw: Mapping[str, Any]) -> Cluster:
    """A cluster description, type-checked like the training config; Cluster checks ranges."""
    try:
        return build_section(Cluster, raw, "cluster")
    except ValueError as e:  # ConfigError is one; Cluster's own range checks raise ValueError
        raise ConfigError(str(e)) from None


def parse_study(raw: Mapping[str, Any]) -> tuple[TrainConfig, ScaleConfig, Cluster]:
    """Validate a composed ``ddtrain-scale`` config: (training config, study, cluster)."""
    raw = {k: v for k, v in raw.items() if k != "hydra"}
    scale = parse_scale(raw.pop("scale", {}) or {})
    cluster = parse_cluster(raw.pop("cluster", {}) or {})
    cfg = from_mapping(raw)
    if "strong" in scale.modes:
        global_batch = scale.strong_global_batch(cfg.data.batch_size)
        bad = [n for n in scale.world_sizes if global_batch % n]
        if bad:
            raise ConfigError(
                f"strong scaling: the global batch {global_batch} does not split over {bad[0]} workers; set "
                "scale.global_batch to a multiple of every world size"
            )
    if scale.predict_only and not cluster.device:
        raise ConfigError(
            "scale.predict_only=true needs a cluster preset to predict for (e.g. cluster=dgx_h100); "
            "cluster=local is calibrated from measured runs"
        )
    return cfg, scale, cluster
