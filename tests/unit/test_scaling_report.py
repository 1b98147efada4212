"""Scaling report writers: CSV/JSON round trips, the PNG's axes, TensorBoard runs read back."""

from __future__ import annotations

import csv
import json
import math
import re

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from ddtrain.scaling.report import (
    COLUMNS,
    _figure,
    format_table,
    write_csv,
    write_json,
    write_report,
    write_tensorboard,
)

PREDICTED_SIZES = [1, 2, 4, 8, 16, 32, 64, 128]
PEAK = 989.0  # fixture only: an H100 SXM dense BF16 datasheet figure


def row(mode: str, kind: str, n: int, efficiency: float) -> dict:
    batch = 32 if mode == "weak" else 256 // n
    step = 0.1 / efficiency if mode == "weak" else 0.8 / n / efficiency
    tflops = 400.0 * efficiency
    measured = kind == "measured"
    return {
        "mode": mode, "kind": kind, "world_size": n, "batch_per_worker": batch, "global_batch": batch * n,
        "step_time_s": step, "step_time_p90_s": step * 1.1 if measured else None,
        "step_time_pass_range": 0.08 if measured else None,
        "compute_s": 0.08, "comm_exposed_s": step - 0.09, "data_s": 0.01 if measured else None,
        "comm_total_s": None if measured else 0.05, "samples_per_s": batch * n / step,
        "speedup": n * efficiency, "scaling_efficiency": efficiency, "tflops_per_worker": tflops,
        "tflops_total": tflops * n, "fraction_of_peak": tflops / PEAK, "peak_tflops": PEAK,
        "peak_source": "datasheet: H100 SXM BF16 dense", "cluster": "h100-ib",
        "state_bytes_per_worker": 16e6 if n == 1 else 12e6 + 4e6 / n,
        "scaling_efficiency_vs_node": None if measured or n < 8 else efficiency / 0.97,
        "node_size": None if measured else 8,
        **{f"efficiency_{key}": None if measured else efficiency + delta
           for key, delta in (("cv_half", 0.01), ("cv_double", -0.02), ("links_minus_20pct", -0.01),
                              ("links_plus_20pct", 0.005))},
    }


def efficiency(n: int, mode: str) -> float:
    return 1.0 / (1.0 + (0.02 if mode == "weak" else 0.05) * math.log2(n))


def rows_fixture(measured: bool = True) -> list[dict]:
    rows = []
    if measured:  # measured a little below the model, as real runs tend to be
        rows += [row("weak", "measured", n, efficiency(n, "weak") - 0.01 * (n > 1)) for n in (1, 2)]
    for mode in ("weak", "strong"):
        rows += [row(mode, "predicted", n, efficiency(n, mode)) for n in PREDICTED_SIZES]
    return rows


META = {"command": "ddtrain-scaling model=mlp", "host": "node0", "cluster": {"name": "h100-ib"}, "fit": 1.5}
PER_STEP = {f"weak-n{n}": {"step_time_s": [0.11, 0.1, 0.12], "compute_s": [0.08] * 3,
                           "comm_exposed_s": [0.02] * 3, "data_s": [0.01] * 3} for n in (1, 2)}


def load(run_dir) -> EventAccumulator:
    # size_guidance 0 = keep every event (the default samples down long runs).
    kinds = ("scalars", "tensors", "histograms", "images", "audio", "compressedHistograms")
    ea = EventAccumulator(str(run_dir), size_guidance={k: 0 for k in kinds})
    ea.Reload()
    return ea


def test_csv_round_trip(tmp_path):
    rows = rows_fixture()
    path = tmp_path / "s.csv"
    write_csv(path, rows)
    with open(path, newline="") as f:
        header, *body = list(csv.reader(f))
    assert tuple(header) == COLUMNS
    assert len(body) == len(rows)
    for cells, expected in zip(body, rows):
        for key, cell in zip(COLUMNS, cells):
            value = expected[key]
            if value is None:
                assert cell == ""
            elif isinstance(value, str):
                assert cell == value
            else:  # repr precision: parses back to the identical number
                assert type(value)(cell) == value


def test_json_round_trip_nan_is_null(tmp_path):
    rows = rows_fixture()
    rows[0]["compute_s"] = float("nan")
    path = tmp_path / "s.json"
    write_json(path, rows, {**META, "bad": float("inf")})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    loaded = json.loads(text)
    assert loaded["meta"]["bad"] is None and loaded["meta"]["cluster"] == META["cluster"]
    assert loaded["rows"][0]["compute_s"] is None
    assert loaded["rows"][1:] == rows[1:]


def test_figure_axes():
    import matplotlib.pyplot as plt

    fig = _figure(rows_fixture(), "test")
    try:
        axes = fig.get_axes()
        assert len(axes) == 2
        assert [ax.get_title() for ax in axes] == ["Scaling efficiency", "Fraction of peak FLOP/s"]
        for ax in axes:
            assert ax.get_xscale() == "log"
            assert ax.xaxis.get_transform().base == 2
            assert any(128 in line.get_xdata() for line in ax.get_lines())
        assert axes[0].get_ylim() == (0, 1.05)  # efficiencies reach 1: the whole range
        top = 1.3 * max(r["fraction_of_peak"] for r in rows_fixture())  # fractions stay under 0.5
        assert axes[1].get_ylim() == pytest.approx((0, top))
        labels = [t.get_text() for t in axes[0].get_xticklabels()]
        assert labels == ["1", "2", "4", "8", "16", "32", "64", "128"]
        legend = [t.get_text() for t in axes[0].get_legend().get_texts()]
        assert "weak, measured" in legend and "strong, predicted (cluster h100-ib)" in legend
        assert "datasheet: H100 SXM BF16 dense" in " ".join(t.get_text() for t in fig.texts)
    finally:
        plt.close(fig)


def test_format_table():
    rows = rows_fixture()
    rows[0]["tflops_per_worker"] = None
    lines = format_table(rows).splitlines()
    assert len(lines) == len(rows) + 1
    assert "fraction of peak" in lines[0] and "step (ms)" in lines[0]
    assert len({len(line) for line in lines}) == 1  # fixed width
    assert lines[1].split()[:3] == ["weak", "measured", "1"]
    assert " - " in lines[1] + " "
    # The chosen baseline's efficiency comes first; both are always there.
    assert lines[0].index("efficiency vs 1") < lines[0].index("efficiency vs node")
    by_node = format_table(rows, "node").splitlines()[0]
    assert by_node.index("efficiency vs node") < by_node.index("efficiency vs 1")


def test_tensorboard(tmp_path):
    rows = rows_fixture()
    write_tensorboard(tmp_path, rows, META, PER_STEP)

    summary = load(tmp_path / "summary")
    for mode, kind in (("weak", "measured"), ("weak", "predicted"), ("strong", "predicted")):
        events = summary.Scalars(f"scaling/efficiency/{mode}_{kind}")
        expected = [r for r in rows if r["mode"] == mode and r["kind"] == kind]
        assert [e.step for e in events] == [r["world_size"] for r in expected]
        assert [e.value for e in events] == pytest.approx([r["scaling_efficiency"] for r in expected])
    tags = summary.Tags()["scalars"]
    assert "scaling/fraction_of_peak/strong_predicted" in tags
    assert "scaling/throughput(samples_per_s)/weak_measured" in tags

    # The layout is stored as a tensor summary under this tag, owned by the custom_scalars plugin.
    assert "custom_scalars__config__" in summary.PluginTagToContent("custom_scalars")
    # Its string_val is a serialized Layout protobuf, not text.
    raw = summary.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    layout = layout_pb2.Layout.FromString(raw)
    [category] = layout.category
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    assert category.title == "scaling study"
    assert charts["efficiency vs world size"] == ["scaling/efficiency/.*"]
    assert charts["efficiency against one node vs world size"] == ["scaling/efficiency_vs_node/.*"]
    node = summary.Scalars("scaling/efficiency_vs_node/weak_predicted")
    assert [e.step for e in node] == [n for n in PREDICTED_SIZES if n >= 8]  # from one node up
    assert charts["fraction of peak vs world size"] == ["scaling/fraction_of_peak/.*"]
    # The units' parentheses are escaped, so the regex matches the literal tag.
    throughput = charts["throughput (samples/s)"][0]
    assert re.fullmatch(throughput, "scaling/throughput(samples_per_s)/weak_measured")
    assert json.loads(summary.Tensors("meta/text_summary")[0].tensor_proto.string_val[0].decode()) == META

    for n in (1, 2):
        run = load(tmp_path / f"weak-n{n}")
        assert [e.value for e in run.Scalars("time/step(s)")] == pytest.approx([0.11, 0.1, 0.12])
        assert [e.step for e in run.Scalars("time/step(s)")] == [0, 1, 2]
        assert "time/comm_exposed(s)" in run.Tags()["scalars"]
        assert run.Scalars("scaling/efficiency")[0].step == n
        hparams = run.PluginTagToContent("hparams")
        assert "_hparams_/experiment" in hparams and "_hparams_/session_start_info" in hparams
        assert b"h100-ib" in hparams["_hparams_/session_start_info"]
    assert not (tmp_path / "strong-n1").exists()  # predicted rows get no run of their own


def test_predicted_only_report(tmp_path):
    rows = rows_fixture(measured=False)
    for r in rows:
        r["compute_s"] = None
    paths = write_report(tmp_path / "study", rows, META)
    assert set(paths) == {"csv", "json", "png", "tb"}
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert paths["csv"].stat().st_size > 0 and json.loads(paths["json"].read_text())["rows"] == rows
    assert sorted(p.name for p in paths["tb"].iterdir()) == ["summary"]


def test_full_report(tmp_path):
    paths = write_report(tmp_path, rows_fixture(), META, PER_STEP, title="full")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in paths["tb"].iterdir()) == ["summary", "weak-n1", "weak-n2"]


def test_the_sensitivity_line_reads_the_largest_predicted_size():
    from ddtrain.scaling.report import format_sensitivity

    rows = rows_fixture()
    lines = format_sensitivity(rows)
    assert len(lines) == 2 and lines[0].startswith("sensitivity, weak at N=128: efficiency ")
    big = next(r for r in rows if r["mode"] == "weak" and r["kind"] == "predicted" and r["world_size"] == 128)
    assert f"cv/2 {big['efficiency_cv_half']:.3f}, 2cv {big['efficiency_cv_double']:.3f}" in lines[0]


def test_a_tiny_fraction_of_peak_is_drawn_as_a_curve():
    import matplotlib.pyplot as plt

    rows = [{**r, "fraction_of_peak": r["fraction_of_peak"] / 200} for r in rows_fixture()]
    fig = _figure(rows, "test")
    try:
        bottom, top = fig.get_axes()[1].get_ylim()
        highest = max(r["fraction_of_peak"] for r in rows)
        assert bottom == 0 and highest < top < 2 * highest  # the curve fills the panel
    finally:
        plt.close(fig)

