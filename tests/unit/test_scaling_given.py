"""``scale.given``: one worker's rate on the cluster's GPU, typed and checked before anything runs."""

from __future__ import annotations

import pytest

from ddtrain.cli import compose_config
from ddtrain.config import ConfigError
from ddtrain.scaling.config import parse_study

BASE = ["scale.predict_only=true", "cluster=dgx_h100", "scale.world_sizes=[1]"]


def study(overrides):
    return parse_study(compose_config([*BASE, *overrides], "scale"))


def test_a_given_rate_is_a_nested_group_of_typed_keys():
    _, scale, _ = study(["scale.given.samples_per_s=1200", "scale.given.fwd_bwd_ratio=0.5",
                         "scale.given.source='paper, table 2'"])
    assert scale.given.samples_per_s == 1200.0 and scale.given.fwd_bwd_ratio == 0.5
    assert scale.given.step_time(4) == pytest.approx(4 / 1200) and scale.given.given
    assert not study([])[1].given.given


@pytest.mark.parametrize("overrides, needle", [
    (["scale.given.step_time_s=0.1", "scale.given.samples_per_s=10"], "are both set; give one"),
    (["scale.given.fwd_bwd_ratio=0.5"], "fwd_bwd_ratio is set but no rate is"),
    (["scale.given.step_time_s=-1"], "scale.given.step_time_s=-1.0 must be >= 0"),
    (["+scale.given.step_tme_s=1"], "unknown key scale.given.step_tme_s"),
    (["scale.given.step_time_s=fast"], "scale.given.step_time_s='fast' is not a number"),
])
def test_bad_given_rates_are_one_line(overrides, needle):
    with pytest.raises(ConfigError) as err:
        study(overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_given_rate_needs_a_cluster_with_a_gpu():
    with pytest.raises(ConfigError, match="scale.given is one worker's rate on the cluster's GPU"):
        parse_study(compose_config(["cluster=local", "scale.given.step_time_s=0.1"], "scale"))


def test_the_baseline_is_one_worker_or_one_node():
    assert study([])[1].baseline == "1"
    assert study(["scale.baseline=node"])[1].baseline == "node"
    with pytest.raises(ConfigError, match="scale.baseline='rack' is not allowed; choose one of: 1, node"):
        study(["scale.baseline=rack"])

