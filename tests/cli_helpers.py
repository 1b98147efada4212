"""Running the real ``ddtrain`` console script (alone or under mpirun) from tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
DDTRAIN = str(BIN / "ddtrain")


def mpirun_path() -> str | None:
    return shutil.which("mpirun", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def mpirun_argv(np_: int) -> list[str]:
    argv = [mpirun_path() or "mpirun", "-np", str(np_)]
    if np_ > (os.cpu_count() or 1):
        argv.append("--oversubscribe")
    return argv


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # Open MPI refuses root unless told twice; CI containers run as root.
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    # Never inherit a launcher's variables from an outer job (pytest under srun/mpirun).
    for key in list(env):
        if key.startswith(("OMPI_", "PMI_", "PMIX_", "SLURM_")) and "ALLOW_RUN_AS_ROOT" not in key:
            del env[key]
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(key, None)
    return env


def run_cli(args: list[str], *, np_: int = 1, cwd: Path | None = None, timeout: float = 300):
    argv = (mpirun_argv(np_) if np_ > 1 else []) + [DDTRAIN, *args]
    return subprocess.run(argv, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout)
