"""Replica descriptors, the start-up mismatch message, and the exact parameter checksums; no
process group (the ranks' side is tests/gloo/test_replica_gloo.py)."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

import pytest
import torch
from torch import nn

from ddtrain.config import TrainConfig, to_flat_dict
from ddtrain.fault import replica
from ddtrain.fault.replica import STARTUP_FIX, describe_replica, first_difference, param_checksums
from ddtrain.models.mlp import MLPConfig

CFG = to_flat_dict(TrainConfig(model=MLPConfig(hidden=8, layers=1)))


def mlp(hidden: int = 8, *, extra: bool = False, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = {"inp": nn.Linear(4, hidden), "act": nn.ReLU()}
    if extra:
        layers["mid"] = nn.Linear(hidden, hidden)
    return nn.Sequential(OrderedDict(layers, out=nn.Linear(hidden, 3)))


def differ(ref_model, other_model, other_cfg=CFG) -> str | None:
    return first_difference(describe_replica(ref_model, CFG), describe_replica(other_model, other_cfg), 0, 1)


def prefix(what: str) -> str:
    return f"replica mismatch at start-up, rank 1 vs rank 0: {what}; {STARTUP_FIX}"


# --------------------------------------------------------------------------- the descriptor
def test_descriptor_is_plain_json_and_the_same_for_two_builds():
    a, b = describe_replica(mlp(seed=0), CFG), describe_replica(mlp(seed=1), CFG)
    assert json.loads(json.dumps(a)) == a  # lists, not tuples: a JSON round trip changes nothing
    assert a == b  # the weights' values are not part of it, only names, shapes, dtypes
    assert a["parameters"][0] == ["inp.weight", [8, 4], "float32"]
    assert [e[0] for e in a["parameters"]] == ["inp.weight", "inp.bias", "out.weight", "out.bias"]
    canonical = json.dumps(CFG, sort_keys=True, separators=(",", ":"))
    assert a["config_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    assert a["config"] == CFG and a["config"] is not CFG


def test_descriptor_lists_buffers_by_structure():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    buffers = describe_replica(model, CFG)["buffers"]
    assert buffers == [["1.running_mean", [4], "float32"], ["1.running_var", [4], "float32"],
                       ["1.num_batches_tracked", [], "int64"]]


# --------------------------------------------------------------------------- first_difference
def test_identical_descriptors_have_no_difference():
    assert differ(mlp(), mlp(seed=3)) is None


def test_a_config_difference_is_named_first_with_the_parameters_it_changed():
    other_cfg = {**CFG, "model.hidden": 16}
    assert differ(mlp(8), mlp(16), other_cfg) == prefix(
        "config key model.hidden is 8 on rank 0 but 16 on rank 1, and 3 of 4 parameters differ "
        "(first: inp.weight has shape [8, 4] on rank 0 but [16, 4] on rank 1)"
    )


def test_a_config_difference_alone_says_the_parameters_agree():
    other_cfg = {**CFG, "optim.lr": 0.01, "seed": 7}
    assert differ(mlp(), mlp(), other_cfg) == prefix(
        "config key optim.lr is 0.001 on rank 0 but 0.01 on rank 1 (first of 2 differing config keys) "
        "(parameters agree)"
    )


def test_config_values_compare_as_json_not_as_python_values():
    # 1 == 1.0 == True in Python; the digest sees three different texts, so must the message.
    assert "is 0 on rank 0 but 0.0 on rank 1" in differ(mlp(), mlp(), {**CFG, "seed": 0.0})
    assert "is true on rank 0 but 1 on rank 1" in differ(mlp(), mlp(), {**CFG, "tensorboard": 1})
    # A key only one rank knows: what two ddtrain versions give.
    assert "config key comm.newer_key is absent on rank 0 but 5 on rank 1" in differ(
        mlp(), mlp(), {**CFG, "comm.newer_key": 5})


def test_a_missing_parameter_is_named():
    assert differ(mlp(extra=True), mlp()) == prefix(
        "2 of 6 parameters differ (first: mid.weight [8, 8] float32 is missing on rank 1)"
    )
    headless = mlp()
    del headless.out
    assert differ(mlp(), headless) == prefix(  # at the end: the tail is missing
        "2 of 4 parameters differ (first: out.weight [3, 8] float32 is missing on rank 1)"
    )


def test_an_extra_parameter_is_named():
    assert differ(mlp(), mlp(extra=True)) == prefix(
        "2 of 4 parameters differ (first: mid.weight [8, 8] float32 exists only on rank 1)"
    )


def test_a_shape_difference_is_named():
    ref, other = mlp(), mlp()
    other.out = nn.Linear(8, 5)
    assert differ(ref, other) == prefix(
        "2 of 4 parameters differ (first: out.weight has shape [3, 8] on rank 0 but [5, 8] on rank 1)"
    )


def test_a_dtype_difference_is_named():
    assert differ(mlp(), mlp().to(torch.bfloat16)) == prefix(
        "4 of 4 parameters differ (first: inp.weight has dtype float32 on rank 0 but bfloat16 on rank 1)"
    )


def test_an_order_difference_is_named():
    ref = describe_replica(mlp(), CFG)
    other = dict(ref, parameters=[ref["parameters"][i] for i in (1, 0, 2, 3)])
    assert first_difference(ref, other, 0, 2) == (
        "replica mismatch at start-up, rank 2 vs rank 0: parameters are in a different order "
        f"(first: position 0 holds inp.weight on rank 0 but inp.bias on rank 2); {STARTUP_FIX}"
    )


def test_a_buffer_difference_is_named():
    ref = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    other = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False))
    assert differ(ref, other) == prefix(
        "3 of 3 buffers differ (first: 1.running_mean [4] float32 is missing on rank 1)"
    )


def test_an_unknown_descriptor_field_still_gives_a_message():
    ref = describe_replica(mlp(), CFG)
    assert first_difference(ref, dict(ref, torch="2.4"), 0, 1) == prefix(
        "descriptor field torch differs between rank 0 and rank 1"
    )


def test_a_version_difference_comes_first():
    ref = describe_replica(mlp(), CFG)
    msg = first_difference(ref, dict(ref, ddtrain="9.9"), 0, 1)
    assert msg == prefix(f"ddtrain version {ref['ddtrain']} on rank 0 but 9.9 on rank 1")


# --------------------------------------------------------------------------- checksums
def reference_checksum(t: torch.Tensor) -> int:
    """The documented formula, in Python integers."""
    width = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int32}[t.element_size()]
    words = t.detach().reshape(-1).view(width).tolist()
    s = sum((w + 2**31) * (i + 1) for i, w in enumerate(words))
    return ((s % replica._P1) << 31) | (s % replica._P2)


def test_checksums_are_equal_for_identical_parameters_and_exact_across_calls():
    a, b = param_checksums(mlp(seed=5)), param_checksums(mlp(seed=5))
    assert a.dtype == torch.int64 and a.shape == (4,)
    assert torch.equal(a, b)
    assert torch.equal(a, param_checksums(mlp(seed=5)))
    assert not torch.equal(a, param_checksums(mlp(seed=6)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_one_ulp_in_one_element_changes_only_that_checksum(dtype):
    model = mlp().to(dtype)
    before = param_checksums(model)
    w = model.out.weight
    with torch.no_grad():
        w[1, 3] = torch.nextafter(w[1, 3], torch.tensor(float("inf"), dtype=dtype))
    after = param_checksums(model)
    assert (before != after).tolist() == [False, False, True, False]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_checksums_follow_the_documented_formula(dtype, monkeypatch):
    t = torch.randn(1000, generator=torch.Generator().manual_seed(0)).to(dtype)
    assert int(replica._checksum(t)) == reference_checksum(t)
    monkeypatch.setattr(replica, "_CHUNK", 7)  # chunked accumulation gives the same number
    assert int(replica._checksum(t)) == reference_checksum(t)


def test_swapping_two_elements_changes_the_checksum():
    model = mlp()
    before = param_checksums(model)
    w = model.inp.weight
    assert w[0, 0] != w[2, 1]
    with torch.no_grad():
        w[0, 0], w[2, 1] = w[2, 1].clone(), w[0, 0].clone()
    assert (before != param_checksums(model)).tolist() == [True, False, False, False]


def test_a_model_without_parameters_has_no_checksums():
    assert param_checksums(nn.ReLU()).shape == (0,)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_checksums_on_the_gpu_equal_those_on_the_cpu(dtype):
    model = mlp(64).to(dtype)
    cpu = param_checksums(model)
    gpu = param_checksums(model.to("cuda"))
    assert gpu.device.type == "cuda"  # computed where the parameters are; nothing copied out
    assert torch.equal(gpu.cpu(), cpu)


def test_message_is_one_line():
    msg = differ(mlp(), mlp(16), {**CFG, "model.hidden": 16, "data.paths": "a.txt,b.txt"})
    assert msg is not None and "\n" not in msg and msg.endswith(STARTUP_FIX)
