"""Launcher detection: each launcher's real variable set, the nesting cases, and bad input.

The variable sets below are what each launcher exports to one rank (plus the noise a shell
carries), written out in full so a reader can check them against the launcher's manual.
"""

from __future__ import annotations

import copy
import dataclasses
import types

import pytest

from ddtrain.dist.env import LaunchEnv, LaunchEnvError, detect_launch_env

SHELL = {"PATH": "/usr/bin:/bin", "HOME": "/home/alice", "LANG": "C.UTF-8"}

# mpirun -np 4 --map-by ppr:2:node on two nodes; this is rank 3 (second rank of the second node).
OPENMPI_RANK3 = {
    **SHELL,
    "OMPI_COMM_WORLD_RANK": "3",
    "OMPI_COMM_WORLD_SIZE": "4",
    "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
    "OMPI_COMM_WORLD_NODE_RANK": "1",
    "OMPI_UNIVERSE_SIZE": "4",
    "OMPI_MCA_orte_ess_num_procs": "4",
    "PMIX_RANK": "3",
    "PMIX_NAMESPACE": "prterun-node01-12345@1",
}

# MPICH's Hydra (mpiexec -n 3), all on this host; this is rank 0.
MPICH_RANK0 = {
    **SHELL,
    "PMI_RANK": "0",
    "PMI_SIZE": "3",
    "PMI_FD": "6",
    "MPI_LOCALRANKID": "0",
    "MPI_LOCALNRANKS": "3",
}

# Intel MPI (mpirun -n 8 -ppn 4) on two nodes; this is rank 5.
INTEL_MPI_RANK5 = {
    **SHELL,
    "PMI_RANK": "5",
    "PMI_SIZE": "8",
    "MPI_LOCALRANKID": "1",
    "MPI_LOCALNRANKS": "4",
    "I_MPI_ROOT": "/opt/intel/oneapi/mpi/latest",
    "I_MPI_HYDRA_TOPOLIB": "hwloc",
}

# MVAPICH2 (mpirun_rsh -np 4, two per node); this is rank 2 (first rank of the second node).
MVAPICH_RANK2 = {
    **SHELL,
    "MV2_COMM_WORLD_RANK": "2",
    "MV2_COMM_WORLD_SIZE": "4",
    "MV2_COMM_WORLD_LOCAL_RANK": "0",
    "MV2_COMM_WORLD_LOCAL_SIZE": "2",
    "MPIRUN_RANK": "2",
    "MPIRUN_NPROCS": "4",
}

# srun -N 2 -n 8 inside job 4242 (step 0); this is task 6 on the second node. The user's
# sbatch script exported MASTER_ADDR/PORT.
SRUN_TASK6 = {
    **SHELL,
    "SLURM_JOB_ID": "4242",
    "SLURM_JOBID": "4242",
    "SLURM_STEP_ID": "0",
    "SLURM_STEPID": "0",
    "SLURM_PROCID": "6",
    "SLURM_LOCALID": "2",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS": "8",
    "SLURM_NPROCS": "8",
    "SLURM_NNODES": "2",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_STEP_NODELIST": "node[001-002]",
    "SLURMD_NODENAME": "node002",
    "MASTER_ADDR": "node001",
    "MASTER_PORT": "29500",
}

# torchrun --nnodes 2 --nproc-per-node 4 --rdzv-id job7; this is rank 5 (local rank 1, node 1).
TORCHRUN_RANK5 = {
    **SHELL,
    "RANK": "5",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "8",
    "LOCAL_WORLD_SIZE": "4",
    "GROUP_RANK": "1",
    "GROUP_WORLD_SIZE": "2",
    "ROLE_RANK": "5",
    "ROLE_WORLD_SIZE": "8",
    "ROLE_NAME": "default",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29400",
    "TORCHELASTIC_RUN_ID": "job7",
    "TORCHELASTIC_USE_AGENT_STORE": "True",
    "TORCHELASTIC_RESTART_COUNT": "0",
    "TORCHELASTIC_MAX_RESTARTS": "0",
    "OMP_NUM_THREADS": "1",
}

# What sbatch gives the batch script itself: a job, no srun step. (sbatch -N 2 -n 4.)
SBATCH_SCRIPT = {
    **SHELL,
    "SLURM_JOB_ID": "777",
    "SLURM_JOBID": "777",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NTASKS": "4",
    "SLURM_NPROCS": "4",
    "SLURM_NNODES": "2",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_TASKS_PER_NODE": "2(x2)",
    "SLURM_JOB_NODELIST": "node[001-002]",
}


def fields(env: LaunchEnv) -> dict:
    """Every field and property, so one comparison checks them all."""
    out = dataclasses.asdict(env)
    out.update(is_main=env.is_main, is_mpi=env.is_mpi, single_host=env.single_host)
    return out


# --------------------------------------------------------------------------- one launcher each
def test_open_mpi():
    assert fields(detect_launch_env(OPENMPI_RANK3)) == {
        "rank": 3, "local_rank": 1, "world_size": 4, "local_world_size": 2,
        "node_rank": 1,  # rank // ranks per node under block mapping
        "launcher": "openmpi", "master_addr": None, "master_port": None, "job_id": None,
        "agent_store": False, "is_main": False, "is_mpi": True, "single_host": False,
    }


def test_mpich_hydra():
    assert fields(detect_launch_env(MPICH_RANK0)) == {
        "rank": 0, "local_rank": 0, "world_size": 3, "local_world_size": 3, "node_rank": 0,
        "launcher": "mpich", "master_addr": None, "master_port": None, "job_id": None,
        "agent_store": False, "is_main": True, "is_mpi": True, "single_host": True,
    }


def test_intel_mpi_reads_as_mpich():
    assert fields(detect_launch_env(INTEL_MPI_RANK5)) == {
        "rank": 5, "local_rank": 1, "world_size": 8, "local_world_size": 4, "node_rank": 1,
        "launcher": "mpich", "master_addr": None, "master_port": None, "job_id": None,
        "agent_store": False, "is_main": False, "is_mpi": True, "single_host": False,
    }


def test_mvapich():
    assert fields(detect_launch_env(MVAPICH_RANK2)) == {
        "rank": 2, "local_rank": 0, "world_size": 4, "local_world_size": 2, "node_rank": 1,
        "launcher": "mvapich", "master_addr": None, "master_port": None, "job_id": None,
        "agent_store": False, "is_main": False, "is_mpi": True, "single_host": False,
    }


def test_slurm_srun():
    assert fields(detect_launch_env(SRUN_TASK6)) == {
        "rank": 6, "local_rank": 2, "world_size": 8,
        "local_world_size": 4,  # 8 tasks over 2 nodes
        "node_rank": 1, "launcher": "slurm", "master_addr": "node001", "master_port": 29500,
        "job_id": "4242.0",  # job and step: two sruns in one allocation are two jobs
        "agent_store": False, "is_main": False, "is_mpi": False, "single_host": False,
    }


def test_slurm_step_counts_win_over_the_allocation():
    # srun -n 2 -N 1 inside an allocation of 8 tasks on 2 nodes: the step is the job.
    environ = {
        **SRUN_TASK6,
        "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0", "SLURM_STEP_ID": "3",
        "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_TASKS_PER_NODE": "2",
    }
    env = detect_launch_env(environ)
    assert (env.rank, env.world_size, env.local_world_size, env.node_rank) == (1, 2, 2, 0)
    assert env.single_host
    assert env.job_id == "4242.3"


def test_torchrun():
    assert fields(detect_launch_env(TORCHRUN_RANK5)) == {
        "rank": 5, "local_rank": 1, "world_size": 8, "local_world_size": 4, "node_rank": 1,
        "launcher": "torchrun", "master_addr": "10.0.0.1", "master_port": 29400, "job_id": "job7",
        "agent_store": True, "is_main": False, "is_mpi": False, "single_host": False,
    }


def test_torchrun_node_rank_falls_back_to_rank_over_local_size():
    environ = {k: v for k, v in TORCHRUN_RANK5.items() if k != "GROUP_RANK"}
    assert detect_launch_env(environ).node_rank == 5 // 4


def test_rank_and_local_rank_without_torchelastic_read_as_torchrun():
    # A hand-rolled launcher that exports the torch.distributed variables (as accelerate does).
    environ = {**SHELL, "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "12355"}
    env = detect_launch_env(environ)
    assert fields(env) == {
        "rank": 1, "local_rank": 1, "world_size": 2,
        "local_world_size": 2,  # no LOCAL_WORLD_SIZE: assume one node
        "node_rank": 0, "launcher": "torchrun", "master_addr": "127.0.0.1", "master_port": 12355,
        "job_id": None, "agent_store": False, "is_main": False, "is_mpi": False, "single_host": True,
    }


@pytest.mark.parametrize("environ", [{}, SHELL], ids=["empty", "shell"])
def test_plain_process_is_a_world_of_one(environ):
    assert fields(detect_launch_env(environ)) == {
        "rank": 0, "local_rank": 0, "world_size": 1, "local_world_size": 1, "node_rank": 0,
        "launcher": "single", "master_addr": None, "master_port": None, "job_id": None,
        "agent_store": False, "is_main": True, "is_mpi": False, "single_host": True,
    }


def test_plain_process_keeps_an_exported_master_address():
    env = detect_launch_env({"MASTER_ADDR": "head", "MASTER_PORT": "4000"})
    assert (env.launcher, env.world_size, env.master_addr, env.master_port) == ("single", 1, "head", 4000)


def test_empty_master_variables_read_as_unset():
    env = detect_launch_env({**OPENMPI_RANK3, "MASTER_ADDR": "", "MASTER_PORT": ""})
    assert (env.master_addr, env.master_port) == (None, None)


def test_launch_env_is_frozen():
    env = detect_launch_env(TORCHRUN_RANK5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.rank = 0  # type: ignore[misc]


# --------------------------------------------------------------------------- nested launchers
# Open MPI starts its remote daemons with srun, so ranks on other nodes even see a Slurm step
# whose SLURM_PROCID is the daemon's node index, not the rank.
ORTED_STEP = {"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2",
              "SLURM_STEP_NUM_NODES": "2", "SLURM_NODEID": "1"}


@pytest.mark.parametrize("daemon_step", [{}, ORTED_STEP], ids=["batch-step", "srun-daemon-step"])
def test_mpirun_inside_sbatch_is_open_mpi(daemon_step):
    env = detect_launch_env({**SBATCH_SCRIPT, **daemon_step, **OPENMPI_RANK3})
    assert fields(env) == {
        "rank": 3, "local_rank": 1, "world_size": 4, "local_world_size": 2, "node_rank": 1,
        "launcher": "openmpi", "master_addr": None, "master_port": None,
        "job_id": "777",  # the allocation names the job
        "agent_store": False, "is_main": False, "is_mpi": True, "single_host": False,
    }


def test_python_inside_sbatch_is_single():
    # The batch script's SLURM_PROCID/SLURM_NTASKS describe the batch step, not a rank of 4:
    # reading them as a 4-rank job would wait forever for three ranks that never start.
    env = detect_launch_env(SBATCH_SCRIPT)
    assert (env.launcher, env.rank, env.world_size, env.local_world_size) == ("single", 0, 1, 1)
    assert env.job_id is None


def test_torchrun_inside_srun_is_torchrun():
    # srun -N 2 --ntasks-per-node 1 torchrun --nproc-per-node 4: Slurm task 1 is node 1's agent.
    srun_agent = {**SRUN_TASK6, "SLURM_PROCID": "1", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
                  "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}
    env = detect_launch_env({**srun_agent, **TORCHRUN_RANK5})
    assert fields(env) == fields(detect_launch_env(TORCHRUN_RANK5))


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "environ, variable",
    [
        ({**OPENMPI_RANK3, "OMPI_COMM_WORLD_RANK": "4"}, "OMPI_COMM_WORLD_RANK"),
        ({**MPICH_RANK0, "PMI_RANK": "3"}, "PMI_RANK"),
        ({**MVAPICH_RANK2, "MV2_COMM_WORLD_RANK": "-1"}, "MV2_COMM_WORLD_RANK"),
        ({**SRUN_TASK6, "SLURM_PROCID": "8"}, "SLURM_PROCID"),
        ({**TORCHRUN_RANK5, "RANK": "8"}, "RANK"),
    ],
    ids=["openmpi", "mpich", "mvapich", "slurm", "torchrun"],
)
def test_rank_outside_world_is_rejected(environ, variable):
    with pytest.raises(LaunchEnvError) as info:
        detect_launch_env(environ)
    message = str(info.value)
    assert variable in message
    assert environ[variable] in message  # the bad value itself


@pytest.mark.parametrize(
    "environ, variable",
    [
        ({**OPENMPI_RANK3, "OMPI_COMM_WORLD_RANK": "x"}, "OMPI_COMM_WORLD_RANK"),
        ({**OPENMPI_RANK3, "OMPI_COMM_WORLD_LOCAL_SIZE": "2.0"}, "OMPI_COMM_WORLD_LOCAL_SIZE"),
        ({**MPICH_RANK0, "PMI_SIZE": "three"}, "PMI_SIZE"),
        ({**SRUN_TASK6, "SLURM_STEP_NUM_TASKS": "n/a"}, "SLURM_STEP_NUM_TASKS"),
        ({**TORCHRUN_RANK5, "WORLD_SIZE": "eight"}, "WORLD_SIZE"),
        ({**TORCHRUN_RANK5, "MASTER_PORT": "http"}, "MASTER_PORT"),
    ],
)
def test_non_integer_is_rejected_by_name(environ, variable):
    with pytest.raises(LaunchEnvError) as info:
        detect_launch_env(environ)
    message = str(info.value)
    assert f"{variable}={environ[variable]!r}" in message
    assert "\n" not in message


def test_torchelastic_without_rank_names_the_missing_variable():
    environ = {k: v for k, v in TORCHRUN_RANK5.items() if k != "RANK"}
    with pytest.raises(LaunchEnvError, match=r"^RANK is not set"):
        detect_launch_env(environ)


def test_local_rank_outside_local_world_is_rejected():
    match = "OMPI_COMM_WORLD_LOCAL_RANK=2 is outside OMPI_COMM_WORLD_LOCAL_SIZE=2"
    with pytest.raises(LaunchEnvError, match=match):
        detect_launch_env({**OPENMPI_RANK3, "OMPI_COMM_WORLD_LOCAL_RANK": "2"})


def test_empty_world_is_rejected():
    with pytest.raises(LaunchEnvError, match="WORLD_SIZE=0 must be >= 1"):
        detect_launch_env({**TORCHRUN_RANK5, "RANK": "0", "WORLD_SIZE": "0"})


# --------------------------------------------------------------------------- purity
ALL_LAUNCHES = [OPENMPI_RANK3, MPICH_RANK0, INTEL_MPI_RANK5, MVAPICH_RANK2, SRUN_TASK6,
                TORCHRUN_RANK5, SBATCH_SCRIPT, {**SBATCH_SCRIPT, **OPENMPI_RANK3}, {}]


@pytest.mark.parametrize("environ", ALL_LAUNCHES)
def test_input_is_not_mutated(environ):
    before = copy.deepcopy(environ)
    detect_launch_env(environ)
    assert environ == before


@pytest.mark.parametrize("environ", ALL_LAUNCHES)
def test_any_read_only_mapping_works(environ):
    # A read-only view cannot be written to: reading is all detect_launch_env does.
    assert detect_launch_env(types.MappingProxyType(environ)) == detect_launch_env(dict(environ))


# --------------------------------------------------------------------------- uneven / pmi2 placement
def test_slurm_uneven_tasks_per_node():
    # srun -N 2 -n 3 (block distribution): node 0 runs tasks 0 and 1, node 1 runs task 2.
    environ = {**SRUN_TASK6, "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_NODEID": "0",
               "SLURM_NTASKS": "3", "SLURM_STEP_NUM_TASKS": "3", "SLURM_STEP_TASKS_PER_NODE": "2,1"}
    env = detect_launch_env(environ)
    assert (env.local_rank, env.local_world_size) == (1, 2)


def test_srun_pmi2_keeps_slurm_placement():
    # Slurm's pmi2 plugin sets PMI_FD, PMI_JOBID, PMI_RANK and PMI_SIZE for every task.
    environ = {**SRUN_TASK6, "PMI_RANK": "6", "PMI_SIZE": "8", "PMI_FD": "7", "PMI_JOBID": "4242.0"}
    env = detect_launch_env(environ)
    assert (env.local_rank, env.local_world_size, env.node_rank) == (2, 4, 1)


def test_slurm_compressed_task_list_is_expanded():
    # "3(x2),2": nodes 0 and 1 run 3 tasks each, node 2 runs 2.
    environ = {**SRUN_TASK6, "SLURM_PROCID": "7", "SLURM_LOCALID": "1", "SLURM_NODEID": "2",
               "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_STEP_NUM_NODES": "3",
               "SLURM_STEP_TASKS_PER_NODE": "3(x2),2"}
    env = detect_launch_env(environ)
    assert (env.local_rank, env.local_world_size, env.node_rank) == (1, 2, 2)


def test_slurm_task_list_without_this_node_is_an_error_naming_it():
    environ = {**SRUN_TASK6, "SLURM_NODEID": "5", "SLURM_STEP_TASKS_PER_NODE": "4(x2)"}
    with pytest.raises(LaunchEnvError, match="SLURM_STEP_TASKS_PER_NODE"):
        detect_launch_env(environ)


def test_torchrun_agent_store_is_noticed():
    assert detect_launch_env(TORCHRUN_RANK5).agent_store
    without = {k: v for k, v in TORCHRUN_RANK5.items() if k != "TORCHELASTIC_USE_AGENT_STORE"}
    assert not detect_launch_env(without).agent_store


# ----------------------------------------------------------------- the address rank 0 serves at
def _resolver(*addrs):
    return lambda host, port, family: [(family, 1, 6, "", (a, 0)) for a in addrs]


def test_host_address_prefers_a_routable_address_of_the_hostname():
    from ddtrain.dist.rendezvous import host_address

    multi = LaunchEnv(world_size=4, local_world_size=2)
    assert host_address(multi, _resolver("127.0.1.1", "10.1.2.3"), lambda: "10.9.9.9") == "10.1.2.3"


def test_host_address_passes_over_debian_s_127_0_1_1_for_the_routed_interface():
    from ddtrain.dist.rendezvous import host_address

    multi = LaunchEnv(world_size=4, local_world_size=2)
    assert host_address(multi, _resolver("127.0.1.1"), lambda: "192.168.7.20") == "192.168.7.20"


def test_host_address_without_any_reachable_address_says_how_to_fix_it():
    from ddtrain.dist.rendezvous import RendezvousError, host_address

    multi = LaunchEnv(world_size=4, local_world_size=2)
    with pytest.raises(RendezvousError, match=r"only to loopback \(127.0.1.1\).*export MASTER_ADDR"):
        host_address(multi, _resolver("127.0.1.1"), lambda: None)
    assert host_address(LaunchEnv(world_size=2, local_world_size=2)) == "127.0.0.1"


def test_host_address_is_the_interface_gloo_is_told_to_use():
    from ddtrain.dist.rendezvous import RendezvousError, host_address, interface_address

    multi = LaunchEnv(world_size=4, local_world_size=2)
    addrs = {"ib0": "192.168.50.3", "eth0": "10.0.0.7"}
    # The hostname resolves to the management network; GLOO_SOCKET_IFNAME=ib0 says where ranks meet.
    for ifname in ("ib0", "ib0,eth0"):
        found = host_address(multi, _resolver("10.0.0.7"), ifname=ifname, iface_address=addrs.get)
        assert found == "192.168.50.3"
    with pytest.raises(RendezvousError, match="GLOO_SOCKET_IFNAME=wlan0 names no interface with an IPv4"):
        host_address(multi, _resolver("10.0.0.7"), ifname="wlan0", iface_address=addrs.get)
    assert interface_address("lo") == "127.0.0.1" and interface_address("no-such-if0") is None
