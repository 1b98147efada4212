"""What the study's launched measurements are asked for: the node-sharing probe's steps per
profile and its two ratios, and the all-reduce calibration's timing budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddtrain.config import ConfigError, TrainConfig
from ddtrain.scaling.config import parse_scale
from ddtrain.scaling.measure import PROBE_STEPS, calibrate_allreduce, measure_node_slowdown


class FakeLauncher:
    """Writes each worker's profile as ``ddtrain.scaling.profile`` would, from fixed phase times."""

    def __init__(self, times: dict[int, tuple[float, float]]):
        self.times = times  # workers -> (compute, optimizer)
        self.programs: list[list[str]] = []

    def run(self, n: int, program: list[str], log_path: Path, what: str) -> None:
        self.programs.append(program)
        out = Path(program[5])
        out.mkdir(parents=True)
        compute, optimizer = self.times[n]
        for rank in range(n):
            (out / f"{rank}.json").write_text(json.dumps(
                {"forward_s": compute / 3, "backward_s": 2 * compute / 3, "optimizer_s": optimizer}))


@pytest.mark.parametrize("steps,timed", [(30, 30), (4, PROBE_STEPS)])
def test_each_probe_profile_times_the_studys_steps_and_the_ratios_are_k_over_one(tmp_path, steps, timed):
    launcher = FakeLauncher({1: (0.10, 0.020), 2: (0.11, 0.030)})
    compute, optimizer = measure_node_slowdown(TrainConfig(), launcher, 2, 8, 1, tmp_path, repeats=2,
                                               steps=steps)
    assert compute == pytest.approx(1.1) and optimizer == pytest.approx(1.5)
    assert len(launcher.programs) == 4  # 1 and 2 workers, twice, interleaved
    assert {p[-1] for p in launcher.programs} == {str(timed)}
    assert all(p[1:3] == ["-m", "ddtrain.scaling.profile"] for p in launcher.programs)


def test_a_slow_spell_cancels_within_a_repeats_pair_and_the_median_of_pairs_resists_one_straddling_it(
        tmp_path):
    class Spells(FakeLauncher):
        """The machine slows by 1.2x from the third profile to the fifth (repeat 1 and the first
        half of repeat 2), which starts with its one worker."""

        def run(self, n, program, log_path, what):
            base = self.times[n]
            slow = 1.2 if 2 <= len(self.programs) <= 4 else 1.0
            self.times[n] = (base[0] * slow, base[1] * slow)
            super().run(n, program, log_path, what)
            self.times[n] = base

    compute, optimizer = measure_node_slowdown(TrainConfig(), Spells({1: (0.10, 0.020), 2: (0.11, 0.030)}),
                                               2, 8, 1, tmp_path, repeats=3)
    # Pairs: 1.1 (both quick), 1.1 (both slow), 0.11 / 0.12 (straddling); a median of each kind
    # over all repeats would give 0.11 / 0.12 = 0.917 for compute.
    assert compute == pytest.approx(1.1) and optimizer == pytest.approx(1.5)


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
