"""The roofline device model as ddtrain-scale uses it: one step recorded on the meta device and
timed on a datasheet GPU, giving the one-worker profile the performance model predicts from."""

from __future__ import annotations

import pytest

from ddtrain.cli import compose_config
from ddtrain.config import ConfigError, from_mapping
from ddtrain.perf.opcount import OpRecord
from ddtrain.scaling.config import parse_study
from ddtrain.scaling.device_model import at_precision, roofline_profile
from ddtrain.scaling.study import choose_device_model


def _cfg(*overrides: str):
    return from_mapping(compose_config(list(overrides)))


def test_a_profile_comes_from_op_counts_with_buckets_ready_in_backward_order():
    cfg = _cfg("model=mlp", "data=synthetic", "comm.bucket_mb=0.05", "comm.first_bucket_mb=0.01")
    rp = roofline_profile(cfg, 32, "h100_sxm")
    p = rp.profile
    assert p.forward_s > 0 and p.backward_s > 0 and p.optimizer_s > 0 and p.data_s == 0.0
    assert len(p.buckets) >= 2
    ready = [b.ready for b in p.buckets]
    assert ready == sorted(ready) and 0 <= ready[0] < 1 and ready[-1] == pytest.approx(1.0)
    assert rp.flops_source == "the model's flops_per_sample()"
    assert rp.profile == roofline_profile(cfg, 32, "h100_sxm").profile  # times nothing: the same each time
    # A batch large enough to leave the launch-bound regime: more time, the same gradient bytes.
    big = roofline_profile(cfg, 4096, "h100_sxm").profile
    assert big.compute_s > p.compute_s and big.grad_bytes == p.grad_bytes


def test_bf16_halves_matmul_bytes_and_runs_at_the_tensor_core_peak():
    rec = OpRecord("mm", "matmul", "forward", 10, 100, "float32", -1, 40)
    add = OpRecord("add", "elementwise", "forward", 0, 100, "float32")
    half = OpRecord("mm", "matmul", "forward", 10, 50, "float32", -1, 20)
    assert at_precision([rec, add], "bf16") == [half, add]
    assert at_precision([rec, add], "fp32") == [rec, add]
    big = ("model=gpt", "data=synthetic", "model.dim=512", "model.layers=4", "data.seq_len=256")
    fp32 = roofline_profile(_cfg(*big), 16, "a100")
    bf16 = roofline_profile(_cfg(*big, "trainer.precision=bf16"), 16, "a100")
    assert bf16.device.name == "a100 bf16" and fp32.device.name == "a100 tf32"
    assert bf16.profile.compute_s < fp32.profile.compute_s


def test_a_recurrence_the_planner_keeps_on_chip_costs_one_persistent_kernel():
    persistent = roofline_profile(_cfg("model=prnn", "data=speech"), 4, "h100_sxm")
    stepwise = roofline_profile(_cfg("model=prnn", "data=speech", "model.path=stepwise"), 4, "h100_sxm")
    assert (persistent.fused_regions, persistent.regions) == (3, 3)
    assert (stepwise.fused_regions, stepwise.regions) == (0, 3)
    # Op by op, each of the 32 steps' dozen small ops pays a launch: far slower at batch 4.
    assert stepwise.profile.compute_s > 5 * persistent.profile.compute_s
    assert persistent.profile.flops_per_sample == stepwise.profile.flops_per_sample


def test_a_model_without_its_own_flop_count_is_counted_from_the_recorded_step(tmp_path, monkeypatch):
    from tests.plugin_pkg import OVERRIDES, write_package

    monkeypatch.syspath_prepend(str(write_package(tmp_path / "site")))
    rp = roofline_profile(_cfg(*OVERRIDES), 8, "l4")
    assert rp.flops_source.startswith("counted from the recorded step")
    assert rp.profile.flops_per_sample > 0


def test_the_default_device_model_measures_only_on_the_clusters_own_gpu():
    assert choose_device_model("auto", "h100_sxm", "") == (
        "roofline", "this machine (a CPU) is not the cluster's h100_sxm")
    assert choose_device_model("auto", "h100_sxm", "NVIDIA A100-SXM4-80GB")[0] == "roofline"
    assert choose_device_model("auto", "h100_sxm", "NVIDIA H100 80GB HBM3") == (
        "measured", "this machine's GPU is the cluster's (h100_sxm): measured here")
    assert choose_device_model("measured", "h100_sxm", "") == ("measured", "scale.device_model=measured")
    assert choose_device_model("auto", "", "") == ("measured", "the cluster is this machine")


def test_a_roofline_needs_a_datasheet_gpu_and_the_choice_is_checked():
    with pytest.raises(ConfigError, match="scale.device_model=roofline needs a datasheet GPU"):
        parse_study({"scale": {"device_model": "roofline"}, "cluster": {"name": "local", "device": "",
                     "gpus_per_node": 1, "intra_bw_GBps": 1.0, "intra_latency_us": 1.0, "inter_bw_GBps": 1.0,
                     "inter_latency_us": 1.0}})
    with pytest.raises(ConfigError, match="scale.device_model='guess' is not allowed"):
        parse_study({"scale": {"device_model": "guess"}})


def test_a_model_that_reads_its_values_is_refused_in_one_line(tmp_path, monkeypatch):
    from ddtrain.scaling.measure import StudyError

    pkg = tmp_path / "valueplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, **kw):\n"
        "        super().__init__()\n"
        "        self.lin = torch.nn.Linear(32 * 32 * 3, 10)\n"
        "    def forward(self, x):\n"
        "        if x.abs().max().item() > 1e9:  # reads a value: no shapes-only run can\n"
        "            x = x * 0\n"
        "        return self.lin(x.flatten(1))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = _cfg("model=custom", "model._target_=valueplug.Net", "data=synthetic")
    with pytest.raises(StudyError) as e:
        roofline_profile(cfg, 8, "h100_sxm")
    message = str(e.value)
    assert "\n" not in message and message.startswith("the roofline device model cannot run Net on the meta")
    assert "fix: scale.device_model=measured" in message
