#!/usr/bin/env bash
# Install ddtrain into .venv and run the main job: a 2-rank data-parallel training run
# (ddtrain-launch -n 2: mpirun with ddtrain's flags; Gloo on CPU or NCCL on GPUs) that writes
# metrics.jsonl and TensorBoard files.
#   bash launch/quickstart.sh [extra Hydra overrides]
# TORCH=...   pip arguments for torch and torchvision (default: torch torchvision), e.g.
#             TORCH="torch==2.14.1 torchvision==0.29.1", or TORCH="torch torchvision
#             --index-url https://download.pytorch.org/whl/cpu" for the CPU-only wheels
# PYTHON=...  interpreter to build the venv with (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

"${PYTHON:-python3}" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Unquoted on purpose: TORCH may hold a requirement and pip options (an index URL).
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${TORCH:-torch torchvision}
# A regular install, not an editable one: setuptools prints a notice for every editable install
# of a package whose folders are mapped (configs/ ships as ddtrain.configs). tests/run.sh installs
# editable, for development.
.venv/bin/python -m pip install -q .

run_dir="outputs/quickstart-$(date +%Y-%m-%d_%H-%M-%S)"
.venv/bin/ddtrain-launch -n 2 -- +experiment=quickstart "hydra.run.dir=$run_dir" "$@"

echo
echo "Run directory: $run_dir  (metrics.jsonl, train.log, model.pt, checkpoints/, .hydra/)"
echo "TensorBoard:   .venv/bin/tensorboard --logdir $run_dir/tb   then open http://localhost:6006"
