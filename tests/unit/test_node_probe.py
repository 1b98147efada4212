"""The node-sharing probe: how many steps each of its profiles times, and the two ratios it returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ddtrain.config import TrainConfig
from ddtrain.scaling.measure import PROBE_STEPS, measure_node_slowdown


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
