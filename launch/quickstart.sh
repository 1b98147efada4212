#!/usr/bin/env bash
# Install ddtrain into .venv and run the main job: a 2-rank data-parallel training run
# (mpirun -np 2, Gloo on CPU or NCCL on GPUs) that writes metrics.jsonl and TensorBoard files.
#   bash launch/quickstart.sh [extra Hydra overrides]
# TORCH=...   pip requirement for torch (default: torch; e.g. TORCH=torch==2.13.0 for a local CPU build)
# PYTHON=...  interpreter to build the venv with (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH:-torch}"
.venv/bin/python -m pip install -q -e .

# Open MPI refuses to run as root unless told twice (containers, CI); harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
run_dir="outputs/quickstart-$(date +%Y-%m-%d_%H-%M-%S)"
.venv/bin/mpirun -np 2 .venv/bin/ddtrain +experiment=quickstart "hydra.run.dir=$run_dir" "$@"

echo
echo "Run directory: $run_dir  (metrics.jsonl, train.log, model.pt, checkpoints/, .hydra/)"
echo "TensorBoard:   .venv/bin/tensorboard --logdir $run_dir/tb   then open http://localhost:6006"
