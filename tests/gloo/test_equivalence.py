"""N ranks with per-rank batch b end with the parameters of 1 rank with batch N*b.

Tolerance (fp32, 3 SGD-momentum steps): rtol 1e-4, atol 1e-5. The only difference between the
runs is the order in which per-sample gradient contributions are summed (across ranks by the
all-reduce instead of inside one matmul), i.e. float32 rounding; ranks must agree bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from ddtrain.trainer import train
from tests.gloo.harness import run_ranks
from tests.gloo.workloads import MODELS, params_of, single_process, tiny, train_each

B = 4  # per-rank batch
FP32 = dict(rtol=1e-4, atol=1e-5)


def reference(name: str, world: int, **kw) -> dict:
    cfg = tiny(name, batch=world * B, **kw)
    return params_of(train(cfg, single_process()))


def assert_params_close(got: dict, want: dict, rtol: float, atol: float, what: str) -> None:
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=rtol, atol=atol, err_msg=f"{what}: {key}")


@pytest.mark.parametrize("world", [2, 3])
def test_every_model_matches_one_rank_with_the_global_batch(world):
    cfgs = {name: tiny(name, batch=B) for name in MODELS}
    per_rank = run_ranks(world, train_each, cfgs)
    for name in MODELS:
        got = per_rank[0][name]
        # Buckets hold several tensors and the model spans several buckets.
        assert len(got["buckets"]) >= 2 and max(got["buckets"]) >= 2, (name, got["buckets"])
        for other in per_rank[1:]:  # replicas stay bitwise identical
            for key, value in got["params"].items():
                np.testing.assert_array_equal(other[name]["params"][key], value, err_msg=f"{name}:{key}")
        assert_params_close(got["params"], reference(name, world), **FP32, what=f"{name} N={world}")
