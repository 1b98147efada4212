"""``ddtrain-scale [overrides]``: a scaling study as a Hydra app sharing ddtrain's config groups.

It runs as ONE process and launches the workers itself (mpirun or srun, with ddtrain-launch's
flags), one job per world size; started under mpirun it would launch N studies, so that is
refused.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from ddtrain.cli import CONFIG_MODULE, preflight
from ddtrain.config import ConfigError
from ddtrain.dist.env import detect_launch_env
from ddtrain.errors import fail

log = logging.getLogger("ddtrain")


def _validate(raw) -> None:
    from ddtrain.scaling.config import parse_study

    parse_study(raw)


def _presets() -> list[str]:
    from importlib.resources import files

    return sorted(p.name.removesuffix(".yaml") for p in files(CONFIG_MODULE).joinpath("cluster").iterdir()
                  if p.name.endswith(".yaml"))


def _looks_like_path(value: str) -> bool:
    return "/" in value or "\\" in value or value.endswith((".yaml", ".yml"))


def cluster_override_problem(overrides: list[str]) -> str | None:
    """The cluster chosen in a way that cannot work, as one line; None when it is fine.

    ``cluster=`` takes a preset's name, so a path there is a file meant for ``scale.cluster_file``;
    and with ``scale.cluster_file`` the file is the whole cluster section, so a ``cluster=`` or
    ``cluster.KEY=`` beside it would be ignored without a word.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None  # preflight reports what Hydra cannot parse, in Hydra's words
    cluster = [o for o in parsed if not o.is_delete() and (o.key_or_group == "cluster"
                                                           or o.key_or_group.startswith("cluster."))]
    for o in cluster:
        value = o.value()
        if o.key_or_group == "cluster" and isinstance(value, str) and _looks_like_path(value):
            presets = ", ".join(_presets())
            return (f"cluster={value} is a file path, but cluster= takes a preset name ({presets}); "
                    f"for your own cluster file use scale.cluster_file={value}")
    files = [o.value() for o in parsed if o.key_or_group == "scale.cluster_file" and not o.is_delete()]
    if not cluster or not files or not files[-1]:
        return None
    given, first = files[-1], cluster[0]
    if first.key_or_group == "cluster":
        return (f"cluster={first.value()} and scale.cluster_file={given} both choose the cluster; "
                "fix: keep one of them")
    key, value = first.key_or_group.removeprefix("cluster."), first.input_line.split("=", 1)[1]
    return (f"{first.input_line} has no effect with scale.cluster_file={given}, which is the whole cluster "
            f"section; fix: write {key}: {value} in {given}")


TRAIN_GROUPS = ("model", "data", "optim", "comm", "trainer")


def study_overrides(choices: dict, task_overrides: list[str]) -> list[str]:
    """What every ``ddtrain`` job of the study gets: the study's group choices (its defaults can
    differ from ``ddtrain``'s), then the user's overrides that concern training."""
    # An experiment preset is passed on as given: it also sets keys (model.layers, ...) that the
    # group choices alone would not carry to the workers.
    skip = ("scale.", "scale=", "cluster", "hydra.")
    groups = [f"{g}={choices[g]}" for g in TRAIN_GROUPS if choices.get(g)]
    picked = {o.split("=", 1)[0] for o in groups}
    rest = [
        o for o in task_overrides
        if not o.lstrip("~+").startswith(skip) and o.split("=", 1)[0] not in picked
    ]
    return groups + rest


def _task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from ddtrain.launcher.flavour import LaunchError
    from ddtrain.perf.mfu import ImpossibleMeasurement
    from ddtrain.perf.peak import PeakError
    from ddtrain.run import setup_logging
    from ddtrain.scaling.config import parse_study
    from ddtrain.scaling.study import StudyError, run_study

    try:
        # hydra.job.chdir=true would move this process; a relative cluster file still means the
        # directory ddtrain-scale was started in.
        hc = HydraConfig.get()
        raw = OmegaConf.to_container(cfg, resolve=True)
        train_cfg, scale, cluster = parse_study(raw, Path(hc.runtime.cwd))
    except ConfigError as e:
        fail(str(e))
    study_dir = Path(hc.runtime.output_dir)
    setup_logging(detect_launch_env(os.environ), None)
    fh = logging.FileHandler(study_dir / "study.log")
    fh.setFormatter(log.handlers[0].formatter)
    log.addHandler(fh)
    log.info("study directory %s", study_dir)
    try:
        overrides = study_overrides(dict(hc.runtime.choices), list(hc.overrides.task))
        result = run_study(train_cfg, scale, cluster, study_dir, overrides)
    except (StudyError, ImpossibleMeasurement, PeakError, LaunchError) as e:
        fail(str(e).splitlines()[0])
    for kind, path in result["paths"].items():
        log.info("%s: %s", kind, path)
    log.info("TensorBoard: tensorboard --logdir %s", result["paths"].get("tb", study_dir / "tb"))


def main() -> None:
    import hydra

    if detect_launch_env(os.environ).world_size > 1:
        fail("ddtrain-scale runs as one process and launches the workers itself; run it without "
             "mpirun/srun/torchrun (inside a Slurm allocation use scale.launcher=srun)")
    from hydra._internal.utils import get_args_parser

    problem = cluster_override_problem(get_args_parser().parse_known_args(sys.argv[1:])[0].overrides)
    if problem:
        fail(problem)
    preflight(sys.argv[1:], config_name="scale", validate=_validate)
    hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="scale", version_base="1.3")(_task)()


if __name__ == "__main__":
    main()
