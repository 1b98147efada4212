#!/usr/bin/env bash
# The GPU check (launch/gpu_check.py): every GPU-only check in one run of at most 8 minutes.
#   bash launch/gpu_check.sh --dry-run   # list the steps
#   bash launch/gpu_check.sh             # run them; results in $OUT (or ./gpu_check/)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" launch/gpu_check.py "$@"
