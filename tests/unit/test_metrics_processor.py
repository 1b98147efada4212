"""The metrics arithmetic: rates, phase split, logging cadence, all from one call per step."""

from __future__ import annotations

import pytest
import torch

from ddtrain.dist.env import detect_launch_env
from ddtrain.dist.group import DistContext
from ddtrain.metrics import MetricsProcessor
from ddtrain.metrics.processor import StepView, Workload, per_step_timings


class FakeClock:
    """Hands out fixed phase durations for however many steps were taken since the last drain."""

    device = torch.device("cpu")

    def __init__(self, durations: dict[str, float]):
        self.durations, self.pending = durations, 0

    def tick(self):
        self.pending += 1

    def drain(self):
        out = [dict(self.durations, total=sum(self.durations.values())) for _ in range(self.pending)]
        self.pending = 0
        return out


class ListWriter:
    def __init__(self):
        self.records, self.closed = [], False

    def log(self, record):
        self.records.append(record)

    def close(self):
        self.closed = True


def processor(workload, *, log_every=3, last_step=7, exposed=True):
    ctx = DistContext(detect_launch_env({}), torch.device("cpu"), None)
    clock = FakeClock({"compute": 0.30, "comm_exposed": 0.05, "optimizer": 0.15})
    writer = ListWriter()
    proc = MetricsProcessor(ctx, writer, clock, workload, log_every=log_every, last_step=last_step,
                            measures_exposed_comm=exposed, lr=lambda: 0.5, epoch=lambda done: done / 10)
    return proc, clock, writer


def run_steps(proc, clock, steps, *, stop_at=None):
    for done in range(1, steps + 1):
        clock.tick()
        proc.step(StepView(done, torch.tensor(float(done)), data_s=0.1, grad_norm=2.0, skipped_total=1,
                           force=done == stop_at))


def test_records_come_every_log_every_steps_and_at_the_last_step():
    proc, clock, writer = processor(Workload(64, 1e9, 0))
    run_steps(proc, clock, 7)
    assert [r["step"] for r in writer.records] == [3, 6, 7]
    assert proc.history == writer.records
    assert [len(r["per_step"]["step_time_s"]) for r in writer.records] == [3, 3, 1]


def test_a_stop_forces_a_record_off_the_cadence():
    proc, clock, writer = processor(Workload(64, 1e9, 0), log_every=10, last_step=100)
    run_steps(proc, clock, 4, stop_at=4)
    assert [r["step"] for r in writer.records] == [4]


def test_rates_follow_from_step_time_and_workload():
    workload = Workload(samples_per_step=64, flops_per_sample=2e9, tokens_per_sample=128)
    proc, clock, writer = processor(workload)
    run_steps(proc, clock, 3)
    r = writer.records[0]
    assert r["step_time_s"] == pytest.approx(0.5)
    assert r["samples_per_s"] == pytest.approx(128.0)
    assert r["achieved_tflops"] == pytest.approx(128.0 * 2e9 / 1e12)
    assert r["tokens_per_s"] == pytest.approx(128.0 * 128)
    assert r["compute_s"] == pytest.approx(0.20)  # the data wait is taken out of compute
    assert r["data_s"] == pytest.approx(0.1)
    assert (r["loss"], r["lr"], r["epoch"], r["grad_norm"], r["skipped_steps"]) == (3.0, 0.5, 0.3, 2.0, 1)
    assert r["world_size"] == 1


def test_models_without_tokens_have_no_token_rate_and_ddp_has_no_exposed_comm():
    proc, clock, writer = processor(Workload(64, 1e9, 0), exposed=False)
    run_steps(proc, clock, 3)
    r = writer.records[0]
    assert "tokens_per_s" not in r
    assert r["comm_exposed_s"] is None and r["per_step"]["comm_exposed_s"] is None


def test_close_closes_the_writer():
    proc, _, writer = processor(Workload(64, 1e9, 0))
    proc.close()
    assert writer.closed


def test_per_step_timings_refuses_mismatched_lengths():
    with pytest.raises(ValueError):
        per_step_timings([{"compute": 1.0, "comm_exposed": 0.0, "optimizer": 0.0}], [0.1, 0.2], [1.0], True)


class SlowFirstClock(FakeClock):
    """The first step takes 10 s (it compiles), every later one 0.5 s."""

    def __init__(self):
        super().__init__({"compute": 0.30, "comm_exposed": 0.05, "optimizer": 0.15})
        self.seen = 0

    def drain(self):
        out = super().drain()
        for i, s in enumerate(out, self.seen):
            if i == 0:
                s.update(compute=9.8, total=10.0)
        self.seen += len(out)
        return out


@pytest.mark.parametrize("log_every", [1, 3])
def test_a_step_that_compiles_is_left_out_of_throughput(log_every):
    ctx = DistContext(detect_launch_env({}), torch.device("cpu"), None)
    writer, clock = ListWriter(), SlowFirstClock()
    proc = MetricsProcessor(ctx, writer, clock, Workload(64, 1e9, 0), log_every=log_every, last_step=6,
                            measures_exposed_comm=True, lr=lambda: 0.5, epoch=lambda done: done / 10,
                            uncounted_through=1)
    run_steps(proc, clock, 6)
    first = writer.records[0]
    if log_every == 1:  # a window of the compiling step alone keeps its own time: nothing else to show
        assert first["step_time_s"] == pytest.approx(10.0)
    else:  # steps 2 and 3 only
        assert first["per_step"]["step_time_s"] == [0.5, 0.5]
        assert first["samples_per_s"] == pytest.approx(128.0)
    assert all(r["step_time_s"] == pytest.approx(0.5) for r in writer.records[1:])


def test_the_clock_sums_a_phase_marked_once_per_micro_step_and_compute_is_forward_plus_backward(monkeypatch):
    from ddtrain.perf import clock as clock_module

    ticks = iter([0.0, 0.10, 0.30, 0.45, 0.65, 0.70, 0.90])
    monkeypatch.setattr(clock_module.time, "perf_counter", lambda: next(ticks))
    c = clock_module.StepClock(torch.device("cpu"))
    c.start_step()
    for name in ("forward", "backward", "forward", "backward", "comm_exposed", "optimizer"):
        c.mark(name)
    (step,) = c.drain()
    assert step["forward"] == pytest.approx(0.10 + 0.15) and step["backward"] == pytest.approx(0.20 + 0.20)
    assert step["compute"] == pytest.approx(0.65) and step["total"] == pytest.approx(0.90)


def test_forward_and_backward_are_split_where_the_clock_marks_them():
    split = per_step_timings([{"forward": 0.3, "backward": 0.5, "compute": 0.8, "comm_exposed": 0.0,
                               "optimizer": 0.1}], [0.1], [1.0], True)
    assert split["forward_s"] == [pytest.approx(0.2)] and split["backward_s"] == [0.5]  # data out of forward
    assert split["compute_s"] == [pytest.approx(0.7)]
    whole = per_step_timings([{"compute": 0.8, "comm_exposed": 0.0, "optimizer": 0.1}], [0.1], [1.0], True)
    assert whole["forward_s"] is None and whole["backward_s"] is None
