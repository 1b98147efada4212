"""Run records: metrics.jsonl lines, TensorBoard tags with units, and silent non-main ranks."""

from __future__ import annotations

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ddtrain.config import TrainConfig, to_flat_dict
from ddtrain.metrics import TAGS, MetricsWriter, NullWriter, make_writer

HPARAMS = to_flat_dict(TrainConfig())


def record(step: int, **overrides) -> dict:
    base = {
        "step": step, "loss": 2.5 / step, "lr": 1e-3, "step_time_s": 0.125, "compute_s": 0.1,
        "forward_s": 0.04, "backward_s": 0.06, "data_s": 0.005, "comm_exposed_s": 0.01, "optimizer_s": 0.01,
        "samples_per_s": 256.0,
        "achieved_tflops": 0.002, "tokens_per_s": 16384.0, "world_size": 2, "grad_norm": 1.5,
        "skipped_steps": 0,
    }
    return {**base, **overrides}


def scalars(tb_dir) -> EventAccumulator:
    events = EventAccumulator(str(tb_dir))
    events.Reload()
    return events


def test_two_records_are_two_json_lines_with_the_same_keys(tmp_path):
    writer = MetricsWriter(tmp_path, HPARAMS, tensorboard=False)
    written = [record(10), record(20, loss=1.5)]
    for r in written:
        writer.log(r)
    writer.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == written
    assert set(json.loads(lines[0])) == set(json.loads(lines[1]))
    assert not (tmp_path / "tb").exists()  # tensorboard=False writes no event files


def test_a_second_writer_appends(tmp_path):
    # A resumed run keeps its earlier lines.
    for step in (1, 2):
        writer = MetricsWriter(tmp_path, HPARAMS, tensorboard=False)
        writer.log(record(step))
        writer.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]


def test_tensorboard_gets_grouped_tags_with_units(tmp_path):
    writer = MetricsWriter(tmp_path / "run", HPARAMS, tensorboard=True)
    writer.log(record(10))
    writer.log(record(20))
    writer.log({"step": 20, "split": "val", "val_loss": 1.25, "val_accuracy": 0.5})  # a validation pass
    writer.text("config", "model:\n  name: mlp")
    writer.close()

    tb_dir = tmp_path / "run" / "tb"
    assert list(tb_dir.glob("events.out.tfevents.*"))
    events = scalars(tb_dir)
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "time/step(s)"} <= tags
    assert tags == set(TAGS.values())  # every numeric key of the records, under its tag
    assert [(e.step, e.value) for e in events.Scalars("loss/val")] == [(20, 1.25)]
    assert all("/" in tag for tag in tags)
    assert [(e.step, e.value) for e in events.Scalars("loss/train")] == [
        (10, pytest.approx(0.25)), (20, pytest.approx(0.125))
    ]
    # The jsonl-only key has no tag.
    assert not any("world_size" in tag for tag in tags)


def test_missing_values_go_to_jsonl_but_not_tensorboard(tmp_path):
    writer = MetricsWriter(tmp_path, HPARAMS, tensorboard=True)
    writer.log(record(1, comm_exposed_s=None, loss=float("nan"), tokens_per_s=float("inf")))
    writer.log(record(2, comm_exposed_s=None, tokens_per_s=float("inf")))
    writer.close()

    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["comm_exposed_s"] is None
    assert first["loss"] is None  # strict JSON: non-finite floats are written as null
    assert first["tokens_per_s"] is None

    events = scalars(tmp_path / "tb")
    tags = set(events.Tags()["scalars"])
    assert TAGS["comm_exposed_s"] not in tags
    assert TAGS["tokens_per_s"] not in tags
    assert [e.step for e in events.Scalars(TAGS["loss"])] == [2]  # the NaN step was skipped
    assert [e.step for e in events.Scalars(TAGS["step_time_s"])] == [1, 2]


def test_non_main_rank_gets_a_null_writer_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    writer = make_writer(is_main=False, run_dir=run_dir, hparams=HPARAMS, tensorboard=True)
    assert isinstance(writer, NullWriter)
    writer.log(record(1))
    writer.text("config", "x")
    writer.close()
    assert not run_dir.exists()
    assert list(tmp_path.iterdir()) == []


def test_main_rank_without_run_dir_gets_a_null_writer():
    assert isinstance(make_writer(True, None, HPARAMS, True), NullWriter)


def test_main_rank_gets_a_real_writer(tmp_path):
    writer = make_writer(is_main=True, run_dir=tmp_path / "run", hparams=HPARAMS, tensorboard=False)
    assert isinstance(writer, MetricsWriter)
    writer.close()
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_resumed_writer_moves_records_past_the_checkpoint_aside(tmp_path):
    """A crash after step 30 with the last checkpoint at 20: the resumed run logs 21.. again, so
    the records past 20 move to metrics.discarded.jsonl (kept, not lost) and TensorBoard purges
    them; a torn last line from the crash goes with them."""
    first = MetricsWriter(tmp_path, HPARAMS, tensorboard=True)
    for step in (10, 20, 30):
        first.log(record(step))
    first.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4')  # torn by the crash
    resumed = MetricsWriter(tmp_path, HPARAMS, tensorboard=True, resume_step=20)
    resumed.log(record(30, loss=9.0))
    resumed.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["loss"] == 9.0
    discarded = (tmp_path / "metrics.discarded.jsonl").read_text().splitlines()
    assert [line[:11] for line in discarded] == ['{"step": 30', '{"step": 4']
    assert [(e.step, e.value) for e in scalars(tmp_path / "tb").Scalars("loss/train")] == [
        (10, pytest.approx(0.25)), (20, pytest.approx(0.125)), (30, pytest.approx(9.0))]


def test_a_resumed_segments_event_file_sorts_after_the_earlier_ones(tmp_path):
    # Event files are read in name order; within one second the name's counter compares as a
    # string ("...9" after "...10"), so a resumed writer waits for the next second.
    import time

    from ddtrain.metrics.writer import after_earlier_event_files

    now = int(time.time())
    recent = tmp_path / f"events.out.tfevents.{now:010d}.host.4242.10"
    recent.write_bytes(b"")
    after_earlier_event_files(tmp_path)
    assert int(time.time()) > now
    recent.rename(tmp_path / "events.out.tfevents.0000000001.h.1.1")
    t0 = time.monotonic()
    after_earlier_event_files(tmp_path)  # only old files: no wait
    assert time.monotonic() - t0 < 0.5
