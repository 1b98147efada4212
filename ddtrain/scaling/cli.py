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
        train_cfg, scale, cluster = parse_study(OmegaConf.to_container(cfg, resolve=True))
    except ConfigError as e:
        fail(str(e))
    hc = HydraConfig.get()
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
    preflight(sys.argv[1:], config_name="scale", validate=_validate)
    hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="scale", version_base="1.3")(_task)()


if __name__ == "__main__":
    main()
