"""The study's pure parts: config validation, run summaries, launch commands, calibration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ddtrain.config import ConfigError
from ddtrain.launcher.mpirun import child_env, mpirun_argv, srun_argv
from ddtrain.perf.peak import datasheet_peak_for
from ddtrain.scaling.cli import study_overrides
from ddtrain.scaling.config import ScaleConfig, parse_study
from ddtrain.scaling.measure import Launcher, summarise, trimmed_per_step
from ddtrain.scaling.model import Cluster, allreduce_time
from ddtrain.scaling.spread import percentile, robust_cv
from ddtrain.scaling.study import Machine, local_cluster


def _raw(scale=None, cluster=None, **train):
    cl = {"name": "local", "device": "", "gpus_per_node": 64, "intra_bw_GBps": 1.0, "intra_latency_us": 0.0,
          "inter_bw_GBps": 1.0, "inter_latency_us": 0.0, "algorithm": "ring", "overhead_us": 0.0, "cv": None}
    return {"scale": scale or {}, "cluster": {**cl, **(cluster or {})}, **train}


def test_study_config_defaults_and_errors():
    cfg, sc, cluster = parse_study(_raw({"world_sizes": [2, 1, 2]}))
    assert sc.world_sizes == (1, 2) and sc.modes == ("weak",) and cluster.name == "local"
    cases = [
        ({"world_sizes": [2, 4]}, {}, "lacks 1"),
        ({"world_sizes": [1, 0]}, {}, ">= 1"),
        ({"mode": "sideways"}, {}, "scale.mode"),
        ({"steps": 1}, {}, "scale.steps"),
        ({"world_sizes": [1, 3], "mode": "strong", "global_batch": 8}, {}, "does not split over 3"),
        ({"predict_only": True}, {}, "needs a cluster preset"),
        ({"bogus": 1}, {}, "unknown key scale.bogus"),
        ({}, {"algorithm": "mesh"}, "cluster.algorithm"),
        ({}, {"cv": -1}, "cluster.cv"),
        ({}, {"gpus_per_node": "eight"}, "cluster.gpus_per_node"),
        ({"mpi": "lam"}, {}, "scale.mpi='lam' is not allowed"),
        ({"launcher": "srun", "hostfile": "hosts"}, {}, "scale.hostfile='hosts' is for mpirun"),
    ]
    for scale, cl, message in cases:
        with pytest.raises(ConfigError, match=message):
            parse_study(_raw(scale, cl))


def test_sizes_to_predict_add_powers_of_two():
    sc = ScaleConfig(world_sizes=(1, 2, 3), predict_to=128)
    assert sc.sizes_to_predict() == [1, 2, 3, 4, 8, 16, 32, 64, 128]
    assert ScaleConfig(world_sizes=(1, 2)).sizes_to_predict() == [1, 2]


def test_summary_drops_warmup_and_uses_max_over_ranks_times():
    steps = [9.0, 9.0] + [1.0, 2.0, 3.0, 4.0, 5.0]  # two slow warm-up steps
    records = [
        {"per_step": {"step_time_s": steps[:4], "compute_s": [0.5] * 4, "comm_exposed_s": None}},
        {"per_step": {"step_time_s": steps[4:], "compute_s": [0.5] * 3, "comm_exposed_s": None}},
    ]
    s = summarise(trimmed_per_step(records, warmup=2))
    assert s["step_time_s"] == 3.0
    assert s["step_time_p90_s"] == pytest.approx(4.6)
    assert s["comm_exposed_s"] is None and s["compute_s"] == 0.5
    assert s["per_step"]["step_time_s"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(Exception, match="raise scale.steps"):
        summarise(trimmed_per_step(records, warmup=6))
    assert percentile([1, 2, 3, 4], 50) == 2.5


def test_launch_commands_are_exact():
    prog = ["ddtrain", "model=gpt"]
    oversubscribed = ["/x/mpirun", "-np", "4", "--oversubscribe", *prog]
    assert mpirun_argv(4, prog, mpirun="/x/mpirun", slots=2) == oversubscribed
    assert mpirun_argv(2, prog, slots=2) == ["mpirun", "-np", "2", *prog]
    assert mpirun_argv(8, prog, hostfile="hosts", slots=2, extra=["--bind-to", "none"]) == [
        "mpirun", "-np", "8", "--hostfile", "hosts", "--bind-to", "none", *prog]
    assert srun_argv(16, prog, extra=["--mpi=pmix"]) == ["srun", "--ntasks=16", "--mpi=pmix", *prog]
    srun = Launcher(ScaleConfig(launcher="srun"))
    # A study's srun workers get the srun flags every ddtrain job step gets (launcher.policy).
    assert srun.argv(4, prog) == ["srun", "--ntasks=4", "--kill-on-bad-exit=1", "--mpi=none", *prog]
    with pytest.raises(ValueError):
        mpirun_argv(0, prog)


def test_child_env_drops_outer_launcher_variables():
    env = child_env({"PATH": "/bin", "OMPI_COMM_WORLD_RANK": "3", "SLURM_PROCID": "1", "RANK": "2",
                     "PMI_RANK": "0", "HOME": "/root"}, is_root=True)
    assert env == {"PATH": "/bin", "HOME": "/root", "OMPI_ALLOW_RUN_AS_ROOT": "1",
                   "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in child_env({}, is_root=False)


def test_study_passes_its_group_choices_and_training_overrides_only():
    choices = {"model": "convnet", "data": "synthetic", "optim": "adamw", "comm": "default",
               "trainer": "default", "cluster": "dgx_h100"}
    task = ["scale.world_sizes=[1,2]", "cluster=dgx_h100", "model.width=8", "model=convnet",
            "hydra.run.dir=x"]
    assert study_overrides(choices, task) == [
        "model=convnet", "data=synthetic", "optim=adamw", "comm=default", "trainer=default", "model.width=8"]
    # A preset's own keys reach the workers: the experiment override is passed on as given.
    passed = study_overrides({**choices, "model": "gpt"}, ["+experiment=quickstart"])
    assert passed[-1] == "+experiment=quickstart"


def test_local_cluster_reproduces_the_fitted_allreduce_at_the_calibrated_size():
    base = Cluster("local", "", 1024, 1.0, 0.0, 1.0, 0.0)
    fit = {"fit": {"alpha_s": 700e-6, "bus_bw_GBps": 0.95}}
    for n in (2, 4):
        c = local_cluster(base, fit, n)
        size = 8 << 20
        expected = 700e-6 + 2 * (n - 1) / n * size / 0.95e9
        assert allreduce_time(size, n, c) == pytest.approx(expected)


def test_target_device_peak_follows_precision_and_device():
    assert datasheet_peak_for("h100_sxm", "bf16").dtype == "bf16"
    assert datasheet_peak_for("NVIDIA H100 80GB HBM3", "fp32").dtype == "tf32"
    assert datasheet_peak_for("v100_sxm2", "bf16").dtype == "fp16"  # no bf16 on Volta
    assert datasheet_peak_for("titanx_maxwell", "fp32").dtype == "fp32"
    with pytest.raises(Exception, match="no datasheet peak"):
        datasheet_peak_for("NVIDIA A10G", "bf16")


def test_repeated_runs_are_interleaved_and_their_steps_pooled(monkeypatch, tmp_path):
    # Two passes over sizes 1 and 2: the second pass runs them in reverse order, every run keeps
    # its own directory, and each size's statistics pool the measured steps of both of its runs.
    import json
    import subprocess

    from ddtrain.scaling import measure as study_measure
    from ddtrain.scaling.measure import TrainingRuns

    launched = []

    def run(argv, **kw):
        run_dir = Path(next(a for a in argv if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        launched.append(run_dir.name)
        run_dir.mkdir(parents=True)
        times = [10.0, 10.0] + [float(len(launched))] * 3  # 2 warm-up steps, then 3 measured
        (run_dir / "metrics.jsonl").write_text(json.dumps({"per_step": {"step_time_s": times}}) + "\n")
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(study_measure.subprocess, "run", run)
    scale = ScaleConfig(world_sizes=(1, 2), repeats=2, warmup_steps=2, steps=3, mpi="openmpi")
    runs = TrainingRuns(scale, Launcher(scale, {}), ["model=mlp"], 1, tmp_path / "study")
    pooled = runs.measure_all({"weak": 8})
    assert launched == ["weak-n1-r0", "weak-n2-r0", "weak-n2-r1", "weak-n1-r1"]
    assert pooled[("weak", 1)]["per_step"]["step_time_s"] == [1.0, 1.0, 1.0, 4.0, 4.0, 4.0]
    assert pooled[("weak", 2)]["per_step"]["step_time_s"] == [2.0, 2.0, 2.0, 3.0, 3.0, 3.0]
    # Each run is steady on its own: the runs' shift (1 s against 4 s) is drift, not jitter.
    one = pooled[("weak", 1)]
    assert one["cv"] == 0.0 and robust_cv(one["per_step"]["step_time_s"]) > 0.5
    # ... and it is what the pass range shows: the runs' medians 1 and 4 s, around 2.5 s.
    assert one["pass_step_times_s"] == [1.0, 4.0]
    assert one["pass_range"] == pytest.approx(3.0 / 2.5)
    assert pooled[("weak", 2)]["pass_range"] == pytest.approx(1.0 / 2.5)
    passes = [json.loads(line)["pass"] for line in (tmp_path / "study" / "measurements.jsonl").open()]
    assert passes == [0, 0, 1, 1]  # every finished run is recorded


def test_one_slow_step_barely_moves_the_jitter_estimate():
    import statistics

    steady = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0]
    hiccup = [*steady, 10.0]  # one step of a shared machine's hiccup
    assert robust_cv(steady) == pytest.approx(robust_cv(hiccup), abs=0.005) and robust_cv(hiccup) < 0.03
    assert statistics.pstdev(hiccup) / statistics.median(hiccup) > 2  # the plain sd is ruled by it
    assert robust_cv([1.0]) == 0.0 and robust_cv([]) == 0.0



def test_the_machine_knows_its_device_kind_and_the_busiest_node():
    peak = datasheet_peak_for("h100_sxm", "bf16")
    cpu = Machine(torch.device("cpu"), cpus=2, threads=1, peak=peak)
    gpu = Machine(torch.device("cuda", 0), cpus=2, threads=0, peak=peak, node_ranks=2)
    assert (cpu.cuda, gpu.cuda) == (False, True)
    assert (cpu.ranks_on_a_node(4), gpu.ranks_on_a_node(4), gpu.ranks_on_a_node(1)) == (4, 2, 1)
