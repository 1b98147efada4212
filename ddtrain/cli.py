"""``ddtrain [overrides]``: the console script. A thin Hydra shell around ``run.run``.

Before Hydra starts the job, the overrides are composed and validated once ("preflight"), so a
bad value ends the run with one line on stderr and exit code 2: no stack trace, no process
group, no hang under mpirun (every rank sees the same overrides and fails the same way).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

from omegaconf import OmegaConf

from ddtrain.config import ConfigError, from_mapping
from ddtrain.dist.env import LaunchEnvError, detect_launch_env
from ddtrain.errors import fail

CONFIG_MODULE = "ddtrain.configs"


@functools.cache
def _launch_env():
    return detect_launch_env(os.environ)


@functools.cache
def _run_name() -> str:
    # Cached: under MPI this is a collective (rank 0's clock is broadcast) and must run
    # exactly once on every rank, however often Hydra resolves the run directory.
    from ddtrain.dist.rendezvous import job_run_name

    return job_run_name(_launch_env())


OmegaConf.register_new_resolver("ddtrain_run_name", _run_name, replace=True)
OmegaConf.register_new_resolver(
    "ddtrain_hydra_subdir", lambda: ".hydra" if _launch_env().is_main else None, replace=True
)


def _fail(message: str) -> None:
    try:
        rank = _launch_env().rank
    except LaunchEnvError:
        rank = 0
    fail(message, rank)


def _one_line(exc: BaseException) -> str:
    options = getattr(exc, "options", None)
    missing = getattr(exc, "missing_cfg_file", None)
    if options and missing and "/" in str(missing):
        group, name = str(missing).rsplit("/", 1)
        return f"{group}={name} is not allowed; choose one of: {', '.join(sorted(options))}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines)


def _unknown_key(key: str, config_name: str, overrides: list[str]) -> str:
    """Hydra's "Could not override 'data.batch_sizee'" (it then suggests appending with +, which
    is wrong for a typo) becomes: which keys the selected option has, and the closest one."""
    import difflib

    from hydra import compose, initialize_config_module

    section, _, leaf = key.partition(".")
    rest = [o for o in overrides if not o.lstrip("+~").startswith(key)]
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name, overrides=rest)
    node = cfg.get(section) if leaf else cfg
    if not leaf or not hasattr(node, "keys"):
        return f"unknown key {key}; top-level keys are: {', '.join(cfg.keys())}"
    keys = list(node.keys())
    close = difflib.get_close_matches(leaf, keys, n=1)
    hint = f" (did you mean {section}.{close[0]}?)" if close else ""
    chosen = f"{section}={node.get('name')}" if "name" in keys else section
    return f"{key} is not a key of {chosen}{hint}; its keys are: {', '.join(keys)}"


def preflight(argv: list[str], config_name: str = "train", validate=from_mapping) -> None:
    """Compose and validate the config the way the job will, and fail in one line if it is bad."""
    from hydra import compose, initialize_config_module
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.cfg or args.shell_completion or args.multirun:
        return  # Hydra's own modes; multirun jobs are validated one by one in the task.
    try:
        _launch_env()
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose(args.config_name or config_name, overrides=args.overrides)
        validate(OmegaConf.to_container(cfg, resolve=True))
    except (ConfigError, LaunchEnvError) as e:
        _fail(str(e))
    except Exception as e:  # Hydra's composition errors: unknown group option, bad syntax ...
        key = re.match(r"Could not override '([^']+)'", str(e))
        if key:
            try:
                _fail(_unknown_key(key.group(1), args.config_name or config_name, args.overrides))
            except Exception:
                pass  # fall back to Hydra's own words
        _fail(_one_line(e))


def _task(cfg) -> None:
    from hydra.core.hydra_config import HydraConfig

    from ddtrain.run import run

    try:
        train_cfg = from_mapping(OmegaConf.to_container(cfg, resolve=True))
    except ConfigError as e:
        _fail(str(e))
    run(train_cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    import hydra

    preflight(sys.argv[1:])
    hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="train", version_base="1.3")(_task)()


if __name__ == "__main__":
    main()
