#!/usr/bin/env bash
# Install ddtrain with its test extras into .venv and run the whole test suite
# (unit, multi-rank Gloo, real mpirun, CLI; GPU tests skip themselves without a GPU).
#   bash tests/run.sh [pytest arguments]
# TORCH=...   pip requirement for torch (default: torch; e.g. TORCH=torch==2.13.0 for a local CPU build)
set -euo pipefail
cd "$(dirname "$0")/.."

"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH:-torch}"
.venv/bin/python -m pip install -q -e '.[dev]'

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
.venv/bin/python -m pytest -q "$@"
