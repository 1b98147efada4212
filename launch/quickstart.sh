#!/usr/bin/env bash
# Install ddtrain into .venv and run the main job: a 2-rank data-parallel training run
# (ddtrain-launch -n 2: mpirun with ddtrain's flags; Gloo on CPU or NCCL on GPUs) that writes
# metrics.jsonl and TensorBoard files.
#   bash launch/quickstart.sh [extra Hydra overrides]
# TORCH=...   pip requirement for torch (default: torch; e.g. TORCH=torch==2.13.0 for a local CPU build)
# PYTHON=...  interpreter to build the venv with (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH:-torch}"
.venv/bin/python -m pip install -q -e .

run_dir="outputs/quickstart-$(date +%Y-%m-%d_%H-%M-%S)"
.venv/bin/ddtrain-launch -n 2 -- +experiment=quickstart "hydra.run.dir=$run_dir" "$@"

echo
echo "Run directory: $run_dir  (metrics.jsonl, train.log, model.pt, checkpoints/, .hydra/)"
echo "TensorBoard:   .venv/bin/tensorboard --logdir $run_dir/tb   then open http://localhost:6006"
