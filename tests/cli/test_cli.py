"""The console script on one process: bad input ends in one line and exit 2; a good run leaves
its records where it says."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import run_cli, run_cli_forked


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["comm.bucket_mb=-1"], "comm.bucket_mb=-1.0 must be > 0"),
        (["model=foo"],
         "model=foo is not allowed; choose one of: convnet, custom, gpt, mlp, prnn, resnet, rnn"),
        (["data.batch_size=0"], "data.batch_size=0 must be > 0"),
        (["data.batch_size=abc"], "data.batch_size='abc' is not an integer"),
        (["comm.dtype=int8"], "comm.dtype='int8' is not allowed; choose one of: fp32, bf16, fp16"),
        (
            ["data.batch_sizee=3"],
            "data.batch_sizee is not a key of data=synthetic (did you mean data.batch_size?)",
        ),
        (["model=gpt", "data=digits"], "data=digits gives images but model needs tokens"),
        (["model=prnn"], "data=synthetic gives images but model needs frames; use data=speech"),
        (["model=gpt", "data=speech"], "data=speech gives frames but model needs tokens"),
        (["model=prnn", "data=speech", "model.cell=lstm"],
         "model.cell='lstm' is not allowed; choose one of: gru, rnn"),
        (["data=speech", "data.max_segment=1"], "data.max_segment=1 must be >= data.min_segment=2"),
        (["model=gpt", "data=chars", "data.paths=[/nonexistent/corpus.txt]"], "no such file"),
        (["modle=gpt"], "modle is not a config group or key; did you mean model? "
                        "groups: model, data, optim, comm, trainer, experiment"),
        (["+experimnt=quickstart"], "experimnt is not a config group or key; did you mean experiment? "
                                    "groups: model, data, optim, comm, trainer, experiment"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, overrides, needle):
    # The console script's main, forked warm: the message and exit code are decided before
    # training, by the same code; a cold start per case would add its imports, nothing tested.
    proc = run_cli_forked([*overrides, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ddtrain: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_console_script_itself_stops_on_bad_input_in_one_line(tmp_path):
    proc = run_cli(["data.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}"], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
        "ddtrain: error: data.batch_size=0 must be > 0"]


def test_a_name_that_is_no_group_or_key_is_named_with_the_groups_of_its_root_config():
    # In-process: the message ddtrain-scale (root config scale.yaml) gives, and the one without a
    # close name. A failing override is what calls this, so it must compose the root config alone.
    from ddtrain.cli import _unknown_name

    scale = _unknown_name("scale", ["clustr=local"])
    assert scale.startswith("clustr is not a config group or key; did you mean cluster? groups: model, data, "
                            "optim, comm, trainer, cluster, experiment; keys: seed, tensorboard, loss, "
                            "scale")
    assert _unknown_name("train", ["xyzzy.depth=3"]) == (
        "xyzzy is not a config group or key; groups: model, data, optim, comm, trainer, experiment; "
        "keys: seed, tensorboard, loss")
    known = ["model=gpt", "+experiment=quickstart", "hydra.run.dir=x", "seed=1"]
    assert _unknown_name("train", known) is None


def test_single_process_run_writes_metrics_tensorboard_and_says_where(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(["model=mlp", "trainer.steps=4", "trainer.log_every=2", "trainer.grad_accum=2",
                    f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for key in ("loss", "samples_per_s", "step_time_s", "comm_exposed_s"):
        assert all(key in r for r in records), key
    for r in records:  # forward and backward, summed over the micro-steps, make up compute
        assert r["forward_s"] > 0 and r["backward_s"] > 0
        assert r["forward_s"] + r["backward_s"] == pytest.approx(r["compute_s"])
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert f"tensorboard --logdir {run_dir / 'tb'}" in proc.stderr


@pytest.mark.slow
def test_the_default_run_learns(tmp_path):
    # Plain `ddtrain` (mlp on synthetic images, 100 steps, a record every 10): the loss of the
    # last record is well below the first's, so a first run shows a model that learns.
    run_dir = tmp_path / "run"
    proc = run_cli(["trainer.progress=false", f"hydra.run.dir={run_dir}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(10, 101, 10))
    assert records[-1]["loss"] <= 0.7 * records[0]["loss"], [r["loss"] for r in records]


def test_torchrun_two_ranks_share_one_run_directory(tmp_path):
    import subprocess

    from tests.cli_helpers import clean_env, console_script

    run_dir = tmp_path / "run"
    argv = [console_script("torchrun"), "--nproc-per-node", "2", "-m", "ddtrain.cli", "model=mlp",
            "model.hidden=32", "trainer.steps=2", "trainer.log_every=1", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 rank(s) via torchrun, backend gloo" in proc.stderr
    assert "failed to bind" not in proc.stderr  # rank 0 joins the agent's store, no second server
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("missing, expected", [
    ("model/foo", "model=foo"),
    ("model/./mine.yaml", "model=./mine.yaml"),
    ("model//abs/mine.yaml", "model=/abs/mine.yaml"),
    ("hydra/job_logging/nope", "hydra/job_logging=nope"),
])
def test_an_unknown_group_option_is_named_as_it_was_typed(missing, expected):
    # In-process: Hydra's "Could not find 'model/./mine.yaml'" as the user typed the override.
    from ddtrain.cli import _not_allowed_option

    class Missing(Exception):
        options = ["a", "b"]
        missing_cfg_file = missing

    assert _not_allowed_option(Missing()) == f"{expected} is not allowed; choose one of: a, b"


def test_a_misspelled_nested_key_is_named_with_the_keys_of_its_own_group():
    # In-process: the deepest existing group on the key's path is the one whose keys are listed.
    from ddtrain.cli import _unknown_key

    overrides = ["scale.predict_only=true", "cluster=dgx_h100", "scale.given.step_tme_s=1"]
    assert _unknown_key("scale.given.step_tme_s", "scale", overrides) == (
        "scale.given.step_tme_s is not a key of scale.given (did you mean scale.given.step_time_s?); "
        "its keys are: step_time_s, samples_per_s, fwd_bwd_ratio, source")
    assert _unknown_key("data.batch_sizee", "train", ["data.batch_sizee=3"]).startswith(
        "data.batch_sizee is not a key of data=synthetic (did you mean data.batch_size?)")
