"""Running the real ``ddtrain`` console script (alone or under mpirun) from tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ddtrain.launcher.mpirun import LauncherNotFound, child_env, console_script, find_mpirun, running_as_root
from ddtrain.launcher.policy import resolve_target

DDTRAIN = console_script("ddtrain")


def mpirun_path() -> str | None:
    try:
        return find_mpirun()
    except LauncherNotFound:
        return None


def clean_env() -> dict[str, str]:
    return child_env(os.environ, is_root=running_as_root())


def mpirun_command(np_: int, program: list[str]) -> list[str]:
    """The argv ddtrain-launch would run: the launch policy's, so tests run ranks as users do."""
    return resolve_target("mpirun", environ=os.environ, mpi="openmpi").command(np_, program)


def run_cli(args: list[str], *, np_: int = 1, cwd: Path | None = None, timeout: float = 300, script=DDTRAIN,
            env: dict[str, str] | None = None):
    """``script args...`` alone (np_ 1) or under mpirun; ``env`` adds variables (PYTHONPATH ...)."""
    program = [script, *args]
    argv = mpirun_command(np_, program) if np_ > 1 else program
    return subprocess.run(argv, cwd=cwd, env={**clean_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def _train_composed(ctx, overrides: list[str], run_dir: Path | None):
    from ddtrain.cli import compose_config
    from ddtrain.config import from_mapping
    from ddtrain.trainer import train

    train(from_mapping(compose_config(overrides)), ctx, run_dir)  # every rank, as the CLI: rank 0 writes


def train_in_process(overrides: list[str], run_dir: Path, *, world: int = 1) -> None:
    """What ``ddtrain overrides... hydra.run.dir=run_dir`` trains on ``world`` ranks, without
    starting a console script: the same composed config and trainer, on this process (world 1)
    or on Gloo ranks forked from the test harness's warm forkserver."""
    if world > 1:
        from tests.gloo.harness import run_ranks

        run_ranks(world, _train_composed, list(overrides), run_dir)
        return
    import torch

    from ddtrain.dist.env import detect_launch_env
    from ddtrain.dist.group import DistContext

    _train_composed(DistContext(detect_launch_env({}), torch.device("cpu"), None), list(overrides), run_dir)


def run_launch_script(name: str, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``launch/<name>`` with this interpreter (benchmark scripts are not console scripts)."""
    import sys

    script = Path(__file__).resolve().parents[1] / "launch" / name
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


REPO = Path(__file__).resolve().parents[1]
DDTRAIN_LAUNCH = console_script("ddtrain-launch")


def run_launcher(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """``ddtrain-launch args...`` with a clean environment plus ``env``."""
    return subprocess.run([DDTRAIN_LAUNCH, *args], cwd=cwd, env={**clean_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def run_shell_script(name: str, *args: str, cwd: Path, env: dict[str, str] | None = None,
                     timeout: float = 300) -> subprocess.CompletedProcess:
    """``bash launch/<name> args...`` with a clean environment plus ``env``."""
    return subprocess.run(["bash", str(REPO / "launch" / name), *args], cwd=cwd,
                          env={**clean_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def load_launch_module(name: str):
    """Import ``launch/<name>.py`` (benchmarks are scripts, not package modules) to reuse its
    helpers in tests."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"launch_{name}", REPO / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
