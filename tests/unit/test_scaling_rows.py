"""A scaling report's rows from given profiles and measurements: the definitions of each
column, which profile a mode's rows use, and the model's error against measurement."""

from __future__ import annotations

import pytest
import torch

from ddtrain.config import TrainConfig
from ddtrain.perf.peak import Peak
from ddtrain.scaling.config import ScaleConfig
from ddtrain.scaling.model import Cluster, Profile, predict_step
from ddtrain.scaling.rows import Point, Profiles, error_drift, model_error, study_rows

PEAK = Peak(flops=1e12, device="cpu", dtype="fp32", measured=True, source="probe")
CLUSTER = Cluster("test", "", 8, 10.0, 1.0, 10.0, 1.0)


def _profile(batch: int) -> Profile:
    return Profile(batch=batch, forward_s=0.01 * batch, backward_s=0.02 * batch, optimizer_s=0.01,
                   data_s=0.001, buckets=(), flops_per_sample=1e8)


def test_point_row_follows_the_definitions():
    row = Point(mode="weak", kind="measured", world_size=2, batch_per_worker=8, step_time_s=0.5,
                one_worker_rate=20.0, flops_per_sample=1e9, peak=PEAK, cluster="this machine",
                compute_s=0.4).row()
    assert row["global_batch"] == 16 and row["samples_per_s"] == 32.0
    assert row["speedup"] == pytest.approx(1.6) and row["scaling_efficiency"] == pytest.approx(0.8)
    assert row["tflops_per_worker"] == pytest.approx(8 * 1e9 / 0.5 / 1e12)
    assert row["tflops_total"] == pytest.approx(2 * row["tflops_per_worker"])
    assert row["fraction_of_peak"] == pytest.approx(row["tflops_per_worker"])  # a 1 TFLOP/s peak
    assert row["compute_s"] == 0.4 and row["comm_total_s"] is None and row["cluster"] == "this machine"
    with pytest.raises(TypeError):
        Point("weak", "measured", 2, 8, 0.5, 20.0, 1e9, PEAK, "x")  # keywords only


def _measured(step: float) -> dict:
    return {"step_time_s": step, "step_time_p90_s": step * 1.1, "compute_s": step * 0.8,
            "comm_exposed_s": 0.0, "data_s": 0.001, "optimizer_s": 0.01, "cv": 0.0}


def test_study_rows_predict_every_size_and_measure_the_measured_ones():
    scale = ScaleConfig(world_sizes=(1, 2), predict_to=4)
    measured = {("weak", 1): _measured(0.3), ("weak", 2): _measured(0.4)}
    profiles = Profiles(TrainConfig(), torch.device("cpu"), {"weak": 8}, measured,
                        by_batch={8: _profile(8)})
    rows = study_rows(scale, profiles, CLUSTER, PEAK, PEAK)
    assert [(r["kind"], r["world_size"]) for r in rows] == [
        ("measured", 1), ("measured", 2), ("predicted", 1), ("predicted", 2), ("predicted", 4)]
    one = rows[0]
    assert one["speedup"] == 1.0 and one["samples_per_s"] == pytest.approx(8 / 0.3)
    # The measured one-worker run replaces the profile's compute time: the model starts there.
    base = profiles.profile(8, "weak")
    assert base.compute_s == pytest.approx(0.3 * 0.8)
    assert rows[2]["step_time_s"] == pytest.approx(predict_step(base, CLUSTER, 1).step_s)
    # Both kinds count a sample's FLOPs from the same profile.
    assert all(r["tflops_per_worker"] * r["step_time_s"] == pytest.approx(8 * 1e8 / 1e12) for r in rows)
    errors = model_error(rows)
    assert list(errors) == ["weak-n1", "weak-n2"]
    assert errors["weak-n2"] == pytest.approx(rows[3]["step_time_s"] / 0.4 - 1)
    assert error_drift(rows) == {}  # one pass per size: nothing to say how far it could move


def test_the_drift_between_passes_bounds_the_error_it_can_resolve():
    from ddtrain.scaling.study import format_errors

    scale = ScaleConfig(world_sizes=(1, 2), predict_to=2)
    measured = {("weak", 1): {**_measured(0.3), "pass_range": 0.30},
                ("weak", 2): {**_measured(0.4), "pass_range": 0.10}}
    profiles = Profiles(TrainConfig(), torch.device("cpu"), {"weak": 8}, measured,
                        by_batch={8: _profile(8)})
    rows = study_rows(scale, profiles, CLUSTER, PEAK, PEAK)
    assert [r["step_time_pass_range"] for r in rows if r["kind"] == "measured"] == [0.30, 0.10]
    assert all(r["step_time_pass_range"] is None for r in rows if r["kind"] == "predicted")
    drift = error_drift(rows)
    assert drift == {"weak-n1": pytest.approx(0.30), "weak-n2": pytest.approx(0.20)}
    text = format_errors({"weak-n1": 0.001, "weak-n2": 0.15}, drift)
    assert text == "weak-n1 +0.1%, weak-n2 +15.0% (drift 20.0%: unresolved)"
    assert format_errors({"weak-n2": -0.25}, drift) == "weak-n2 -25.0% (drift 20.0%: beyond it)"


def test_strong_rows_skip_sizes_the_global_batch_does_not_split_over():
    scale = ScaleConfig(world_sizes=(1,), mode="strong", predict_to=8, predict_only=True)
    profiles = Profiles(TrainConfig(), torch.device("cpu"), {"strong": 12}, {},
                        by_batch={b: _profile(b) for b in (12, 6, 3)}, overlap=False)
    rows = study_rows(scale, profiles, CLUSTER, PEAK, PEAK)
    assert [(r["world_size"], r["batch_per_worker"]) for r in rows] == [(1, 12), (2, 6), (4, 3)]
    assert model_error(rows) == {}
    assert profiles.profile(6, "strong").overlap is False


def test_predicted_rows_carry_the_node_baseline_and_the_sensitivity_of_their_efficiency():
    from ddtrain.scaling.model import Bucket

    gpus = Cluster("gpus", "h100_sxm", 4, 50.0, 5.0, 5.0, 20.0, cv=0.03, cv_source="assumption: test")
    profile = Profile(batch=8, forward_s=0.01, backward_s=0.02, optimizer_s=0.001, data_s=0.0,
                      buckets=(Bucket(50e6, 0.5), Bucket(50e6, 1.0)), flops_per_sample=1e8)
    profiles = Profiles(TrainConfig(), torch.device("cpu"), {"weak": 8}, {}, by_batch={8: profile})
    rows = study_rows(ScaleConfig(world_sizes=(1,), predict_to=32, predict_only=True), profiles, gpus, PEAK,
                      PEAK)
    by_n = {r["world_size"]: r for r in rows}
    assert all(r["node_size"] == 4 for r in rows)
    assert [by_n[n]["scaling_efficiency_vs_node"] for n in (1, 2)] == [None, None]  # below one node
    assert by_n[4]["scaling_efficiency_vs_node"] == pytest.approx(1.0)
    # Against a node, the efficiency loses only what crossing nodes costs.
    big = by_n[32]
    node_rate = by_n[4]["samples_per_s"]
    assert big["scaling_efficiency_vs_node"] == pytest.approx(big["samples_per_s"] / (8 * node_rate))
    assert big["scaling_efficiency_vs_node"] > big["scaling_efficiency"]
    # More jitter or slower links: lower efficiency; less or faster: higher. N = 1 has neither.
    assert big["efficiency_cv_double"] < big["scaling_efficiency"] < big["efficiency_cv_half"]
    slower, faster = big["efficiency_links_minus_20pct"], big["efficiency_links_plus_20pct"]
    assert slower < big["scaling_efficiency"] < faster
    assert by_n[1]["efficiency_cv_double"] == pytest.approx(1.0)


def test_a_given_rate_sets_one_workers_step_and_the_rest_follow_the_profile():
    from ddtrain.scaling.config import GivenRate

    gpus = Cluster("gpus", "h100_sxm", 8, 50.0, 5.0, 5.0, 20.0, cv=0.0, cv_source="assumption: test")
    given = GivenRate(samples_per_s=800.0, fwd_bwd_ratio=0.5, source="a paper, table 1")
    by_batch = {8: _profile(8), 4: _profile(4), 2: _profile(2), 1: _profile(1)}
    profiles = Profiles(TrainConfig(), torch.device("cpu"), {"weak": 8, "strong": 8}, {}, transfer=123.0,
                        by_batch=by_batch, given=given)
    one = profiles.profile(8, "weak")
    assert predict_step(one, gpus, 1).step_s == pytest.approx(8 / 800.0)  # the given rate, not transfer
    assert one.forward_s / one.backward_s == pytest.approx(0.5)
    # Strong scaling: a worker with half the batch takes what the profile says half a batch takes.
    half = profiles.profile(4, "strong")
    here = _profile(4).compute_s / _profile(8).compute_s
    assert (half.forward_s + half.backward_s + half.optimizer_s) / (
        one.forward_s + one.backward_s + one.optimizer_s) == pytest.approx(here, rel=0.05)
    scale = ScaleConfig(world_sizes=(1,), predict_to=8, predict_only=True)
    rows = study_rows(scale, profiles, gpus, PEAK, PEAK)
    assert rows[0]["samples_per_s"] == pytest.approx(800.0)
    with pytest.raises(Exception, match="no longer than the data wait"):
        Profiles(TrainConfig(), torch.device("cpu"), {"weak": 8}, {}, by_batch={8: _profile(8)},
                 given=GivenRate(step_time_s=0.0001)).profile(8, "weak")


def test_the_profile_times_the_bucket_fill_in_backwards_hooks_as_the_reducer_does_it(monkeypatch):
    # With a copy per tensor the reducer fills each gradient's slot in its hook and drops the
    # gradient; the profile runs such steps between plain ones and takes the difference.
    from ddtrain.config import from_mapping
    from ddtrain.scaling import profile

    slots = []
    views = profile.slot_views
    monkeypatch.setattr(profile, "slot_views",
                        lambda buffers, plan: slots.extend(views(buffers, plan)) or slots)
    cfg = from_mapping({"model": {"name": "mlp", "hidden": 256, "layers": 3}, "data": {"image_size": 16}})
    prof = profile.profile_worker(cfg, 8, torch.device("cpu"), steps=4, warmup=1)
    assert prof.grad_bytes > 0 and slots
    assert all(bool(v.abs().sum() > 0) for v in slots)  # filled by the hooks, never by a pass after
    # A pass over the gradients, costing (or saving) much less than the backward that made them.
    assert abs(prof.fill_s) < prof.backward_s


def test_the_probe_worker_times_each_step_together_and_then_alone_in_its_own_turn(monkeypatch):
    # Every step: all meet, compute at once, meet before the optimizer step; then one turn per
    # worker, each opened by a meeting, and only this worker's own turn runs a step. The waits
    # are in no phase, or sharing would look costlier than it is.
    import time

    from ddtrain.config import from_mapping
    from ddtrain.scaling import probe

    met, stepped = [], []
    timed = probe.timed_step
    monkeypatch.setattr(probe, "timed_step", lambda w, cfg, before_update=None: stepped.append(
        before_update is not None) or timed(w, cfg, before_update))
    cfg = from_mapping({"model": {"name": "mlp", "hidden": 32, "layers": 2}, "data": {"image_size": 8}})
    pairs = probe.sharing_pairs(cfg, 4, rank=1, k=3, meet=lambda: met.append(1) or time.sleep(0.05),
                                steps=3, warmup=1)
    assert len(met) == (1 + 3) * (2 + 3) + 1
    assert stepped == [True, False] * (1 + 3)  # together, then alone in its own turn only
    assert len(pairs["together"]) == len(pairs["alone"]) == 3
    assert all(0 < t < 0.05 for kind in pairs.values() for step in kind for t in step)


def test_the_profile_fills_the_buckets_as_the_reducer_packs_them(monkeypatch):
    # comm.pack picks the fill the reducer will use: one Triton launch per bucket where it
    # packs with Triton (auto on a GPU; here forced, in the interpreter), a copy per tensor else.
    from ddtrain.comm.packing import TritonBuckets
    from ddtrain.config import from_mapping
    from ddtrain.scaling.profile import bucket_fill, profile_worker

    packed = []
    pack = TritonBuckets.pack
    monkeypatch.setattr(TritonBuckets, "pack",
                        lambda self, b, scale: packed.append(b) or pack(self, b, scale))
    comm = {"pack": "triton", "bucket_mb": 0.01, "first_bucket_mb": 0.01}
    cfg = from_mapping({"model": {"name": "mlp", "hidden": 64, "layers": 2}, "data": {"image_size": 8},
                        "comm": comm})
    prof = profile_worker(cfg, 4, torch.device("cpu"), steps=2, warmup=1)
    buckets = len(prof.buckets)
    assert buckets > 1 and prof.fill_s > 0
    assert packed == list(range(buckets)) * 3  # every bucket, every step (1 warm-up + 2)

    # The Triton fill writes what the per-tensor copy writes.
    params = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    for p in params:
        p.grad = torch.randn_like(p)
    from ddtrain.comm.buckets import plan_buckets

    plan = plan_buckets([15, 7], 4, 64, 64)
    filled = {}
    for how in ("torch", "triton"):
        buffers = [torch.full((n,), float("nan")) for n in plan.sizes]
        bucket_fill(how, params, plan, buffers)()
        filled[how] = torch.cat(buffers)
    assert len(plan.sizes) == 2 and torch.equal(filled["torch"], filled["triton"])
    assert torch.equal(torch.sort(filled["torch"]).values,
                       torch.sort(torch.cat([p.grad.reshape(-1) * 0.5 for p in params])).values)
