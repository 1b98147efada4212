"""The CUDA-only branches that can be exercised without a GPU: torch.cuda faked where needed."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
import torch.distributed as dist

from ddtrain.data.feed import to_device
from ddtrain.data.loader import _pinned
from ddtrain.dist.env import LaunchEnv
from ddtrain.dist.group import init_distributed, pick_backend, pick_device
from ddtrain.perf.peak import match_device, peak_dtype


@pytest.fixture
def four_gpus(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: calls.append(torch.device(dev)))
    return calls


def test_each_local_rank_takes_its_own_gpu_and_nccl_is_the_gpu_backend(four_gpus):
    env = LaunchEnv(rank=5, local_rank=1, world_size=8, local_world_size=4, launcher="openmpi")
    assert pick_device(env, "auto") == torch.device("cuda", 1)  # the local rank, not the global one
    assert pick_device(env, "cpu") == torch.device("cpu")
    assert pick_backend(torch.device("cuda", 1), "auto") == "nccl"
    assert pick_backend(torch.device("cpu"), "auto") == "gloo"
    with pytest.raises(RuntimeError, match="comm.backend=nccl needs CUDA devices"):
        pick_backend(torch.device("cpu"), "nccl")


def test_more_ranks_than_gpus_on_a_node_is_refused_for_nccl_in_one_line(four_gpus):
    env = LaunchEnv(rank=0, local_rank=0, world_size=16, local_world_size=8, launcher="openmpi")
    with pytest.raises(RuntimeError) as e:
        init_distributed(env, backend="auto", device="auto", timeout_s=5)
    message = str(e.value)
    assert "8 ranks on this node but 4 visible GPU(s): NCCL refuses two ranks on one GPU" in message
    assert "CUDA_VISIBLE_DEVICES" in message and "comm.backend=gloo" in message and "\n" not in message
    assert four_gpus == [torch.device("cuda", 0)]  # the device was chosen, nothing else started


def test_joining_a_group_the_program_started_puts_each_rank_on_its_gpu(four_gpus, monkeypatch):
    # mp.spawn-style: the program started the group itself, and no launcher variable is set.
    import ddtrain.api.context as api

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(api, "_CONTEXT", None)
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID", "PMI_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = api.init()
    assert ctx.device == torch.device("cuda", 3) and ctx.rank == 3 and ctx.world_size == 4
    assert four_gpus == [torch.device("cuda", 3)]  # the current device too: Triton and events use it
    monkeypatch.setattr(api, "_CONTEXT", None)


def test_the_tf32_setting_is_read_through_torchs_newer_switch_too():
    matmul = torch.backends.cuda.matmul
    assert hasattr(matmul, "fp32_precision")  # torch 2.9+, as the project pins
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"  # reading allow_tf32 now raises in torch
        assert peak_dtype(torch.device("cuda"), "fp32") == "tf32"
        matmul.fp32_precision = "ieee"
        assert peak_dtype(torch.device("cuda"), "fp32") == "fp32"
        assert peak_dtype(torch.device("cpu"), "fp32") == "fp32"
    finally:
        matmul.fp32_precision = before


def test_a_mig_slice_or_an_unlisted_variant_is_probed_not_held_to_the_whole_gpu():
    assert match_device("NVIDIA A100-SXM4-40GB MIG 1g.5gb") is None
    assert match_device("NVIDIA H100 80GB HBM3 MIG 1g.10gb") is None
    assert match_device("NVIDIA H200 NVL") is None
    assert match_device("NVIDIA H200") == "h200" and match_device("NVIDIA H100 NVL") == "h100_nvl"


def test_named_tuple_batches_move_and_device_tensors_are_not_pinned():
    Pair = namedtuple("Pair", "x y")
    moved = to_device(Pair(torch.ones(2), [torch.zeros(1)]), torch.device("cpu"))
    assert isinstance(moved, Pair) and moved.x.tolist() == [1.0, 1.0]
    on_device = torch.empty(2, device="meta")  # stands in for a tensor already on the GPU
    assert _pinned(on_device) is on_device
    assert _pinned({"a": Pair(on_device, on_device)})["a"].x is on_device
