#!/usr/bin/env bash
# Install ddtrain with its test extras into .venv and run the test suite.
#   bash tests/run.sh                  everything (unit, kernels, docs, CLI, Gloo ranks, real mpirun)
#   bash tests/run.sh -m "not slow"    the quick tier: pure, in-process tests only
#   bash tests/run.sh [pytest arguments]
# The 20 slowest tests are listed at the end, so a creeping suite is seen.
# GPU tests skip themselves without a GPU. TEST_WORKERS=N sets the parallel workers (0: serial).
# TORCH=...   pip arguments for torch and torchvision (default: torch torchvision), e.g.
#             TORCH="torch==2.14.1 torchvision==0.29.1", or TORCH="torch torchvision
#             --index-url https://download.pytorch.org/whl/cpu" for the CPU-only wheels
set -euo pipefail
cd "$(dirname "$0")/.."

"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Unquoted on purpose: TORCH may hold a requirement and pip options (an index URL).
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${TORCH:-torch torchvision}
.venv/bin/python -m pip install -q -e '.[dev]'

# Tests run in parallel workers, one more than the usable CPUs (at most 8): the slow ones spend
# part of their time waiting on launched processes. Each test module stays on one worker
# (--dist loadscope), so a job that several tests read is started once. TEST_WORKERS=0: serial.
workers=${TEST_WORKERS:-$(( $(nproc) + 1 > 8 ? 8 : $(nproc) + 1 ))}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
.venv/bin/python -m pytest -q -n "$workers" --dist loadscope --durations=20 "$@"
