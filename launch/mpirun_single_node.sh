#!/usr/bin/env bash
# ddtrain on N ranks of this machine, one GPU per rank (CPU ranks with Gloo when there is no
# GPU), started by ddtrain-launch, which picks the flags for Open MPI, MPICH or Intel MPI.
#   bash launch/mpirun_single_node.sh [Hydra overrides...]
#   NP=4 bash launch/mpirun_single_node.sh model=gpt data=chars trainer.steps=500
# NP=N         ranks (default: the GPUs nvidia-smi lists, else 2)
# RUN_DIR=DIR  run directory (default: ddtrain's outputs/<date>/<time>); run again with the same
#              RUN_DIR and trainer.resume=auto to continue from its newest checkpoint
# LAUNCH_ARGS  more ddtrain-launch options, e.g. "--mpi=mpich" or "--dry-run"
# Uses the repo's .venv when there is one (launch/quickstart.sh makes it), else PATH.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -x "$repo/.venv/bin/ddtrain-launch" ]]; then
  PATH="$repo/.venv/bin:$PATH"
fi

count_gpus() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    # grep -c prints 0 and fails when there is no match; the 0 is the answer.
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}

if [[ -z "${NP:-}" ]]; then
  NP="$(count_gpus)"
  if [[ "$NP" -lt 1 ]]; then NP=2; fi
fi

args=("$@")
if [[ -n "${RUN_DIR:-}" ]]; then
  args+=("hydra.run.dir=$RUN_DIR")
fi
# LAUNCH_ARGS is a list of options: split on spaces on purpose.
# shellcheck disable=SC2086
exec ddtrain-launch -n "$NP" ${LAUNCH_ARGS:-} -- "${args[@]}"
