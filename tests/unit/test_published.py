"""How a published case's figures are set beside the prediction (the runs themselves are in
tests/cli/test_published_cases.py)."""

from __future__ import annotations

import pytest

from ddtrain.scaling.published import FRACTION_GOAL, Case, Outcome, outcome


def test_a_published_fraction_comes_from_the_rate_and_the_same_flop_count():
    case = Case("c", "s", (), world_size=8, baseline="node", efficiency=0.9, rate_per_worker=50.0)
    row = {"kind": "predicted", "world_size": 8, "scaling_efficiency": 0.8,
           "scaling_efficiency_vs_node": 0.95, "tflops_per_worker": 6.0, "step_time_s": 0.5,
           "batch_per_worker": 30, "peak_tflops": 10.0, "fraction_of_peak": 0.6}
    o = outcome(case, {"rows": [row], "meta": {"device_model": {"name": "roofline"}}})
    # 6 TFLOP/s x 0.5 s / 30 samples = 100 GFLOP per sample; 50 samples/s of it on 10 TFLOP/s.
    assert o.published_fraction == pytest.approx(0.5) and o.predicted_efficiency == 0.95
    assert o.efficiency_miss == pytest.approx(0.05) and not o.within_goal
    near = Outcome("c", "", 8, "1", 0.9, 0.88, 0.5, 0.5 + FRACTION_GOAL - 1e-9, "roofline")
    assert near.within_goal
    assert not Outcome("c", "", 8, "1", 0.9, 0.88, 0.5, 0.5 + FRACTION_GOAL + 1e-3, "roofline").within_goal
    assert Outcome("c", "", 8, "1", 0.9, 0.92, None, 0.7, "roofline").within_goal  # no published fraction
