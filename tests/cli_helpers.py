"""Running the real ``ddtrain`` console script (alone or under mpirun) from tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from ddtrain.launcher.mpirun import LauncherNotFound, child_env, console_script, find_mpirun, running_as_root
from ddtrain.launcher.policy import resolve_target

DDTRAIN = console_script("ddtrain")
# What this process's forkserver imports once, for every child forked from it (Gloo ranks, CLI
# runs). Import only: running an op there would start the OpenMP pool that forking must not
# copy. torch._dynamo is listed because an optimizer imports it when it is built.
FORKSERVER_PRELOAD = ["torch", "torch._dynamo", "torch.distributed", "torch.optim", "ddtrain.trainer",
                      "ddtrain.run", "ddtrain.cli", "tests.gloo.workloads"]


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


def _cli_child(argv: list[str], env: dict[str, str], cwd: str | None, out: str, err: str) -> None:
    """``ddtrain argv...`` in a child of the warm forkserver, as the console script runs it: its
    environment, its argv, its stdout and stderr on files; its SystemExit is the child's exit code."""
    import sys

    os.environ.clear()
    os.environ.update(env)
    # PYTHONPATH is read when an interpreter starts; this one started in the forkserver.
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if cwd:
        os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [DDTRAIN, *argv]
    from ddtrain.cli import main

    main()


def run_cli_forked(args: list[str], tmp_path: Path, *, env: dict[str, str] | None = None,
                   cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``run_cli(args)`` for one process that stops before training (bad input): the same
    ``ddtrain.cli.main`` with the same environment and argv, forked from a forkserver that has
    imported torch and ddtrain once, so each case costs a fork, not an interpreter start."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(FORKSERVER_PRELOAD)
    out, err = tmp_path / "cli.stdout", tmp_path / "cli.stderr"
    proc = ctx.Process(target=_cli_child, args=(list(args), {**clean_env(), **(env or {})},
                                                str(cwd) if cwd else None, str(out), str(err)))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        raise subprocess.TimeoutExpired([DDTRAIN, *args], timeout, err.read_text())
    return subprocess.CompletedProcess([DDTRAIN, *args], proc.exitcode, out.read_text(), err.read_text())


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
