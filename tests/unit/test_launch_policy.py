"""The one launch policy without MPI or Slurm: srun's exact argv, ``ddtrain-launch --launcher
srun``, the environment a launch gets, the usable-CPU count, and the proof that a study's
workers are started exactly as ``ddtrain-launch`` starts a user's job.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from ddtrain.launcher import cli, policy
from ddtrain.launcher.cores import usable_cpus
from ddtrain.launcher.flavour import FLAVOURS
from ddtrain.launcher.mpirun import child_env, console_script
from ddtrain.launcher.policy import SRUN_FLAGS, launch_command
from ddtrain.scaling import measure as study_measure
from ddtrain.scaling.config import ScaleConfig
from ddtrain.scaling.measure import Launcher, TrainingRuns

PROG = ["/venv/bin/ddtrain", "model=gpt"]
MPIRUN = "/opt/mpi/bin/mpirun"


# ---------------------------------------------------------------- the pure function

def test_srun_argv_is_exact():
    assert launch_command("srun", 16, PROG, extra=["--mpi=pmix"]) == [
        "srun", "--ntasks=16", "--kill-on-bad-exit=1", "--mpi=none", "--mpi=pmix", *PROG]
    # No count: srun starts every task of the allocation. Nothing is forwarded by name.
    assert launch_command("srun", None, PROG, environ={"NCCL_DEBUG": "INFO"}, is_root=True, slots=1) == [
        "srun", *SRUN_FLAGS, *PROG]


@pytest.mark.parametrize("args, kw, match", [
    (("torchrun", 2), {}, "'torchrun' is not known"),
    (("mpirun", None), {}, "number of ranks; fix"),
    (("srun", 2), {"hostfile": "hosts"}, "'hosts' is for mpirun.*fix"),
    (("srun", 0), {}, "np=0 must be >= 1"),
])
def test_launches_that_cannot_be_built_are_refused(args, kw, match):
    with pytest.raises(ValueError, match=match):
        launch_command(*args, PROG, **kw)


def test_srun_jobs_keep_the_allocation_and_the_rendezvous():
    outer = {"PATH": "/bin", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "16", "MASTER_ADDR": "n1",
             "MASTER_PORT": "29500", "OMPI_COMM_WORLD_RANK": "3", "PMI_RANK": "0", "RANK": "2"}
    assert child_env(outer, is_root=False, launcher="srun") == {
        "PATH": "/bin", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "16", "MASTER_ADDR": "n1",
        "MASTER_PORT": "29500"}
    # mpirun's ranks rendezvous through MPI: an outer job's variables would mislead them.
    assert child_env(outer, is_root=False, launcher="mpirun") == {"PATH": "/bin"}


# ---------------------------------------------------------------- usable CPUs

def test_usable_cpus_counts_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {4, 5, 6}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cpus() == 3


def test_usable_cpus_falls_back_to_cpu_count_then_one(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cpus() == 6
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert usable_cpus() == 1


# ---------------------------------------------------------------- ddtrain-launch --launcher srun

def _main(capsys, argv):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_launch_with_srun_prints_the_policy_command(capsys):
    rc, out, err = _main(capsys, ["--launcher", "srun", "--dry-run", "--launcher-args=--container-image=x#y",
                                  "--program", "apptainer exec a.sif ddtrain", "--", "a=1"])
    assert rc == 0 and err == ""
    # The program stays as given: srun's tasks share the caller's PATH, or a container's own.
    assert shlex.split(out) == ["srun", *SRUN_FLAGS, "--container-image=x#y", "apptainer", "exec", "a.sif",
                                "ddtrain", "a=1"]
    _, out, _ = _main(capsys, ["--launcher=srun", "-n", "4", "--dry-run", "a=1"])
    assert shlex.split(out) == ["srun", "--ntasks=4", *SRUN_FLAGS, "ddtrain", "a=1"]


@pytest.mark.parametrize("argv, words", [
    (["--launcher", "srun", "--mpirun", "/x/mpirun"], ["--mpirun is for mpirun", "fix"]),
    (["--launcher", "srun", "--mpi", "mpich"], ["--mpi is for mpirun", "fix"]),
    (["--launcher", "srun", "--hostfile", "hosts", "--dry-run"], ["'hosts' is for mpirun", "fix"]),
    (["--launcher", "pbs", "-n", "2"], ["invalid choice: 'pbs'", "srun"]),
])
def test_srun_refusals_are_one_line_exit_2(capsys, argv, words):
    rc, out, err = _main(capsys, argv)
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1 and lines[0].startswith("ddtrain-launch: error: ")
    assert all(w in lines[0] for w in words), lines[0]


# ---------------------------------------------------------------- a study's workers = ddtrain-launch

@pytest.fixture
def machine(monkeypatch):
    """An MPI install at MPIRUN, root, and a one-core machine (so --oversubscribe shows)."""
    monkeypatch.setattr(policy, "find_mpirun", lambda: MPIRUN)
    monkeypatch.setattr(policy, "running_as_root", lambda: True)
    monkeypatch.setattr(policy, "machine_slots", lambda: 1)
    return {"PATH": "/venv/bin:/usr/bin", "NCCL_DEBUG": "INFO", "DDTRAIN_TAG": "x",
            "OMPI_COMM_WORLD_RANK": "3", "SLURM_JOB_ID": "7", "MASTER_ADDR": "n1", "MASTER_PORT": "29500"}


def _study_worker(monkeypatch, tmp_path: Path, scale: ScaleConfig, environ: dict, n: int):
    """The argv and environment ``TrainingRuns.measure`` starts its job with, captured in place of
    running it (the capture writes the metrics a run would)."""
    seen = {}

    def run(argv, **kw):
        seen.update(argv=argv, env=kw["env"])
        run_dir = Path(next(a for a in argv if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"per_step": {"step_time_s": [1.0] * 30}}) + "\n")
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(study_measure.subprocess, "run", run)
    runs = TrainingRuns(scale, Launcher(scale, environ), ["model=mlp"], 2, tmp_path / "study")
    runs.measure("weak", n, 8, 0)
    return seen["argv"], seen["env"]


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("with_hostfile", [False, True])
def test_study_workers_run_exactly_as_ddtrain_launch_runs_them(monkeypatch, tmp_path, machine, flavour,
                                                               with_hostfile):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node01:8\n")
    scale = ScaleConfig(mpi=flavour, hostfile=str(hostfile) if with_hostfile else "",
                        launcher_args=("--mca", "btl", "tcp"))
    argv, env = _study_worker(monkeypatch, tmp_path, scale, machine, n=4)
    program_args = argv[argv.index(console_script("ddtrain")) + 1:]
    hostfile_args = ["--hostfile", str(hostfile)] if with_hostfile else []
    user = cli.plan(["-n", "4", "--mpi", flavour, *hostfile_args, "--mpi-args=--mca btl tcp", "--",
                     *program_args], machine)
    assert argv == user.command and env == user.env
    assert argv[0] == MPIRUN and ("--oversubscribe" in argv) == (flavour == "openmpi" and not with_hostfile)


def test_study_workers_under_srun_run_as_ddtrain_launch_runs_them(monkeypatch, tmp_path, machine):
    scale = ScaleConfig(launcher="srun", launcher_args=("--gpus-per-task=1",))
    argv, env = _study_worker(monkeypatch, tmp_path, scale, machine, n=2)
    program = argv[argv.index(console_script("ddtrain")):]
    user = cli.plan(["--launcher", "srun", "-n", "2", "--launcher-args=--gpus-per-task=1",
                     "--program", program[0], "--", *program[1:]], machine)
    assert argv == user.command and env == user.env
    assert env["SLURM_JOB_ID"] == "7" and "OMPI_COMM_WORLD_RANK" not in env
