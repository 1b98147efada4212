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
from ddtrain.errors import fail, one_line

CONFIG_MODULE = "ddtrain.configs"
PRESET_GROUP = "experiment"  # taken as +experiment=NAME: in no root config's defaults list


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


def _not_allowed_option(exc: BaseException) -> str | None:
    """Hydra's "Could not find 'model/foo'" (with its search path) as our "model=foo is not
    allowed; choose one of: ..."; None for any other error."""
    options = getattr(exc, "options", None)
    missing = getattr(exc, "missing_cfg_file", None)
    if options and missing and "/" in str(missing):
        # A group path is names (hydra/job_logging); the option after it may hold a path of
        # its own (model=./mine.yaml, model=/abs/mine.yaml), which does not start with a name.
        parts = str(missing).split("/")
        cut = 1
        while cut < len(parts) - 1 and parts[cut].isidentifier():
            cut += 1
        group, name = "/".join(parts[:cut]), "/".join(parts[cut:])
        return f"{group}={name} is not allowed; choose one of: {', '.join(sorted(options))}"
    return None


def _top_level_names(overrides: list[str]) -> list[str]:
    """The first part of each override's key (``+experiment=x`` -> experiment, ``data.seq_len=8``
    -> data); none when Hydra cannot parse them (it then says why itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return []
    return [re.split(r"[./@]", o.key_or_group)[0] for o in parsed]


def _unknown_name(config_name: str, overrides: list[str]) -> str | None:
    """A top-level name that is neither a config group nor a key (``modle=gpt``,
    ``+experimnt=quickstart``) as one line with the closest name and the groups; else None."""
    import difflib

    from hydra import compose, initialize_config_module

    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name, return_hydra_config=True)  # the root config, no overrides
    except Exception:
        return None  # the root config itself is broken: Hydra's words say more than ours
    groups = [k for k in cfg if k in cfg.hydra.runtime.choices] + [PRESET_GROUP]  # in YAML order
    keys = [k for k in cfg if k not in groups and k != "hydra"]
    for name in _top_level_names(overrides):
        if name in groups or name in keys or name == "hydra":
            continue
        close = difflib.get_close_matches(name, groups + keys, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        return (f"{name} is not a config group or key; {hint}groups: {', '.join(groups)}; "
                f"keys: {', '.join(keys)}")
    return None


def _unknown_key(key: str, config_name: str, overrides: list[str]) -> str:
    """Hydra's "Could not override 'data.batch_sizee'" (it then suggests appending with +, which
    is wrong for a typo) becomes: which keys the selected option has, and the closest one."""
    import difflib

    from hydra import compose, initialize_config_module

    rest = [o for o in overrides if not o.lstrip("+~").startswith(key)]
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name, overrides=rest)
    # The deepest group on the key's path that exists (scale.given.step_tme_s: scale.given).
    *parents, leaf = key.split(".")
    node, depth = cfg, 0
    while depth < len(parents) and hasattr(node, "keys") and parents[depth] in node:
        node, depth = node.get(parents[depth]), depth + 1
    section = ".".join(parents[:depth])
    if not section or not hasattr(node, "keys"):
        return f"unknown key {key}; top-level keys are: {', '.join(cfg.keys())}"
    leaf = ".".join(key.split(".")[depth:])
    keys = list(node.keys())
    close = difflib.get_close_matches(leaf, keys, n=1)
    hint = f" (did you mean {section}.{close[0]}?)" if close else ""
    chosen = f"{section}={node.get('name')}" if "name" in keys else section
    return f"{key} is not a key of {chosen}{hint}; its keys are: {', '.join(keys)}"


def compose_config(overrides: list[str], config_name: str = "train") -> dict:
    """The config that ``ddtrain overrides...`` runs, as plain data (Hydra's own keys left out).
    Raises Hydra's errors; ``from_mapping`` of the result gives the typed, validated config."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def preflight(argv: list[str], config_name: str = "train", validate=from_mapping) -> None:
    """Compose and validate the config the way the job will, and fail in one line if it is bad."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    if args.help or args.hydra_help or args.info or args.cfg or args.shell_completion or args.multirun:
        return  # Hydra's own modes; multirun jobs are validated one by one in the task.
    config_name = args.config_name or config_name
    try:
        _launch_env()
        validate(compose_config(args.overrides, config_name))
    except LaunchEnvError as e:
        _fail(str(e))
    except Exception as e:  # a bad value (ConfigError), or Hydra's composition errors
        # A misspelled group or key explains the failure best, whatever Hydra made of it.
        _fail(_unknown_name(config_name, args.overrides) or _explain(e, config_name, args.overrides))


def _explain(exc: Exception, config_name: str, overrides: list[str]) -> str:
    if isinstance(exc, ConfigError):
        return str(exc)
    key = re.match(r"Could not override '([^']+)'", str(exc))
    if key:
        try:
            return _unknown_key(key.group(1), config_name, overrides)
        except Exception:
            pass  # fall back to Hydra's own words
    return _not_allowed_option(exc) or one_line(exc, typed=False)


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
