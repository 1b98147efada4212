"""What the study's launched measurements are asked for: the node-sharing probe's steps per
worker and its two ratios, and the all-reduce calibration's timing budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddtrain.config import ConfigError, TrainConfig
from ddtrain.scaling.config import parse_scale
from ddtrain.scaling.measure import PROBE_STEPS, StudyError, calibrate_allreduce, measure_node_slowdown


class FakeLauncher:
    """Writes each worker's timings as ``ddtrain.scaling.probe`` would: per step, (compute,
    optimizer) together with the others and alone, from fixed phase times and a machine speed
    that ``speed(launch, step)`` gives."""

    def __init__(self, together: tuple[float, float], alone: tuple[float, float],
                 speed=lambda launch, step: 1.0):
        self.together, self.alone, self.speed = together, alone, speed
        self.programs: list[list[str]] = []

    def run(self, n: int, program: list[str], log_path: Path, what: str) -> None:
        launch = len(self.programs)
        self.programs.append(program)
        out = Path(program[5])
        out.mkdir(parents=True)
        steps = int(program[6])
        for rank in range(n):
            pairs = {kind: [[t * self.speed(launch, i) for t in times] for i in range(steps)]
                     for kind, times in (("together", self.together), ("alone", self.alone))}
            (out / f"{rank}.json").write_text(json.dumps(pairs))


@pytest.mark.parametrize("steps,timed", [(30, 30), (4, PROBE_STEPS)])
def test_each_probe_worker_times_the_studys_steps_and_the_ratios_are_together_over_alone(
        tmp_path, steps, timed):
    launcher = FakeLauncher(together=(0.11, 0.030), alone=(0.10, 0.020))
    compute, optimizer = measure_node_slowdown(TrainConfig(), launcher, 2, 8, 1, tmp_path, repeats=2,
                                               steps=steps)
    assert compute == pytest.approx(1.1) and optimizer == pytest.approx(1.5)
    assert len(launcher.programs) == 2  # one launch of the k workers per repeat
    assert {p[-1] for p in launcher.programs} == {str(timed)}
    assert all(p[1:3] == ["-m", "ddtrain.scaling.probe"] for p in launcher.programs)


def test_a_slow_spell_cancels_within_each_steps_pair(tmp_path):
    # The machine is 1.3x slower for the whole second launch and for a few steps of the first;
    # each step's pair sees the same speed, so the factors do not move.
    def speed(launch, step):
        return 1.3 if launch == 1 or 3 <= step < 6 else 1.0

    launcher = FakeLauncher((0.11, 0.030), (0.10, 0.020), speed)
    compute, optimizer = measure_node_slowdown(TrainConfig(), launcher, 2, 8, 1, tmp_path, 2, steps=12)
    assert compute == pytest.approx(1.1) and optimizer == pytest.approx(1.5)


def test_a_probe_that_wrote_nothing_is_named(tmp_path):
    class Silent(FakeLauncher):
        def run(self, n, program, log_path, what):
            Path(program[5]).mkdir(parents=True)

    with pytest.raises(StudyError, match="node-sharing probe wrote no timings"):
        measure_node_slowdown(TrainConfig(), Silent((1, 1), (1, 1)), 2, 8, 1, tmp_path, repeats=1)


def test_the_calibration_times_each_size_for_the_studys_budget(tmp_path):
    seen = []

    class Calibration:
        def run(self, n, program, log_path, what):
            seen.append(program)
            out = next(a.split("=", 1)[1] for a in program if a.startswith("--out="))
            Path(out).write_text("{}")

    calibrate_allreduce(parse_scale({"allreduce_budget_s": 1.5}), Calibration(), 2, tmp_path, "cpu")
    assert "--budget-s=1.5" in seen[0]
    with pytest.raises(ConfigError, match="scale.allreduce_budget_s"):
        parse_scale({"allreduce_budget_s": 0})
