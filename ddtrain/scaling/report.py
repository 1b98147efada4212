"""The writers of a scaling study's report: CSV, JSON, a PNG and TensorBoard runs.

A study hands over one row per (mode, kind, world size), measured or predicted by the
performance model, plus a free-form ``meta`` dict (command, host, cluster, peak, fits). Every
writer takes the same rows, so the CSV, the plot and TensorBoard can never disagree.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

from ddtrain.metrics import TAGS, json_safe

COLUMNS: tuple[str, ...] = (
    "mode", "kind", "world_size", "batch_per_worker", "global_batch",
    "step_time_s", "step_time_p90_s", "step_time_pass_range", "compute_s", "comm_exposed_s", "data_s",
    "comm_total_s",
    "samples_per_s", "speedup", "scaling_efficiency", "scaling_efficiency_vs_node", "node_size",
    "efficiency_cv_half", "efficiency_cv_double", "efficiency_links_minus_20pct",
    "efficiency_links_plus_20pct",
    "tflops_per_worker", "tflops_total", "fraction_of_peak", "peak_tflops", "peak_source", "cluster",
    "state_bytes_per_worker",
)

# Row key -> (summary tag prefix, per-run hparams metric tag). Units ride in the tag name.
SCALING_TAGS = {
    "scaling_efficiency": ("scaling/efficiency", "scaling/efficiency"),
    "scaling_efficiency_vs_node": ("scaling/efficiency_vs_node", None),  # predicted, from one node up
    "fraction_of_peak": ("scaling/fraction_of_peak", "scaling/fraction_of_peak"),
    "samples_per_s": ("scaling/throughput(samples_per_s)", "scaling/samples_per_s"),
    "step_time_s": ("scaling/step_time(s)", "scaling/step_time(s)"),
    "tflops_per_worker": ("scaling/tflops_per_worker", None),
}
PER_STEP_KEYS = ("step_time_s", "compute_s", "comm_exposed_s", "data_s")  # tags from metrics.TAGS
MODE_COLOURS = {"weak": "tab:blue", "strong": "tab:orange"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in rows:
            # str(float) is repr in Python 3: the shortest text that parses back to the same float.
            writer.writerow("" if row.get(key) is None else row[key] for key in COLUMNS)


def write_json(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    text = json.dumps(json_safe({"meta": meta, "rows": rows}), indent=2, allow_nan=False, default=str)
    Path(path).write_text(text + "\n")


def _y_top(values: list[float]) -> float:
    """Top of a panel's y axis. Both quantities are in (0, 1]: the whole range while the values
    reach past half of it, so panels compare at a glance; else 1.3 x the largest value, so that a
    fraction of peak of 0.002 is a curve, not a flat line at 0."""
    high = max(values, default=1.0)
    return 1.05 if high > 0.5 or high <= 0 else 1.3 * high


def _figure(rows: list[dict[str, Any]], title: str):
    import matplotlib

    matplotlib.use("Agg")  # no display on a cluster node; must precede pyplot
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120, sharex=True)
    panels = (("scaling_efficiency", "Scaling efficiency", "speedup / N"),
              ("fraction_of_peak", "Fraction of peak FLOP/s", "achieved / peak FLOP/s per worker"))
    for ax, (key, label, ylabel) in zip(axes, panels):
        for mode in ("weak", "strong"):
            for kind in ("predicted", "measured"):
                sel = sorted((r for r in rows if r["mode"] == mode and r["kind"] == kind and _number(r[key])),
                             key=lambda r: r["world_size"])
                if not sel:
                    continue
                colour = MODE_COLOURS.get(mode, "tab:grey")
                xs, ys = [r["world_size"] for r in sel], [r[key] for r in sel]
                if kind == "predicted":
                    ax.plot(xs, ys, "-o", color=colour, markerfacecolor="white",
                            label=f"{mode}, predicted (cluster {sel[0]['cluster']})")
                else:  # measured points sit on top of the model they validate
                    ax.plot(xs, ys, "--o", color=colour, markersize=7, zorder=3, label=f"{mode}, measured")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, _y_top([r[key] for r in rows if _number(r[key])]))
        ax.set_xlabel("world size (workers)")
        ax.set_ylabel(ylabel)
        ax.set_title(label)
        ax.grid(True, which="major", alpha=0.3)
    sizes = sorted({r["world_size"] for r in rows})
    if sizes:
        lo, hi = int(math.log2(sizes[0])), math.ceil(math.log2(sizes[-1]))
        ticks = [2**k for k in range(lo, hi + 1)]
        # Integer labels at powers of two; the default log formatter would print 2^k.
        axes[0].xaxis.set_major_locator(FixedLocator(ticks))
        axes[0].xaxis.set_minor_locator(NullLocator())
        axes[0].set_xticklabels([str(t) for t in ticks])
    axes[0].legend(loc="lower left", fontsize=8)
    # Which peak the fractions divide by decides how to read them: a datasheet peak is rarely reachable.
    kinds_by_source: dict[str, list[str]] = {}
    for r in rows:
        kinds = kinds_by_source.setdefault(r["peak_source"], [])
        kinds += [] if r["kind"] in kinds else [r["kind"]]
    note = "peak FLOP/s: " + "; ".join(f"{s} ({' and '.join(k)} rows)" for s, k in kinds_by_source.items())
    fig.suptitle(title)
    fig.text(0.5, 0.925, note, ha="center", va="top", fontsize=8, color="dimgray")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def plot(path: Path, rows: list[dict[str, Any]], title: str) -> None:
    import matplotlib.pyplot as plt

    fig = _figure(rows, title)
    fig.savefig(path)
    plt.close(fig)  # pyplot keeps every figure alive until closed


def _run_name(mode: str, world_size: int) -> str:
    return f"{mode}-n{world_size}"


def write_tensorboard(tb_dir: Path, rows: list[dict[str, Any]], meta: dict[str, Any],
                      per_step: dict[str, dict[str, list[float]]] | None) -> None:
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    tb_dir = Path(tb_dir)
    per_step = per_step or {}
    for row in (r for r in rows if r["kind"] == "measured"):
        name = _run_name(row["mode"], row["world_size"])
        writer = SummaryWriter(log_dir=str(tb_dir / name))
        for key in PER_STEP_KEYS:
            for step, value in enumerate(per_step.get(name, {}).get(key, [])):
                if _number(value):
                    writer.add_scalar(TAGS[key], value, step)
        hparams = {k: row[k] for k in ("world_size", "mode", "batch_per_worker", "global_batch", "cluster")}
        metrics = {tag: row[key] for key, (_, tag) in SCALING_TAGS.items() if tag is not None}
        # The hparams table shows the last value of each metric tag found in the run, so the
        # metrics are also logged as scalars; the summary's own values are only placeholders.
        for summary in hparams_summary(hparams, {tag: 0.0 for tag in metrics}):
            writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            if _number(value):
                writer.add_scalar(tag, value, row["world_size"])
        writer.close()

    writer = SummaryWriter(log_dir=str(tb_dir / "summary"))
    for row in rows:
        for key, (prefix, _) in SCALING_TAGS.items():
            if _number(row[key]):  # global_step = world size: the x axis of a scaling plot
                writer.add_scalar(f"{prefix}/{row['mode']}_{row['kind']}", row[key], row["world_size"])

    def chart(key: str) -> list[Any]:
        # Custom-scalar charts match tags by regex; the units' parentheses must not become groups.
        return ["Multiline", [re.escape(SCALING_TAGS[key][0] + "/") + ".*"]]

    writer.add_custom_scalars({"scaling study": {
        "efficiency vs world size": chart("scaling_efficiency"),
        "efficiency against one node vs world size": chart("scaling_efficiency_vs_node"),
        "fraction of peak vs world size": chart("fraction_of_peak"),
        "throughput (samples/s)": chart("samples_per_s"),
        "step time (s)": chart("step_time_s"),
    }})
    text = json.dumps(json_safe(meta), indent=2, default=str)
    writer.add_text("meta", "    " + text.replace("\n", "\n    "))  # 4-space indent: a markdown code block
    writer.close()


def format_table(rows: list[dict[str, Any]], baseline: str = "1") -> str:
    """The printed table; ``baseline`` ("1" or "node") decides which efficiency comes first."""
    # (header, row key, format spec); text columns align left, numbers right, missing values print "-".
    efficiencies = [("efficiency vs 1", "scaling_efficiency", ".3f"),
                    ("efficiency vs node", "scaling_efficiency_vs_node", ".3f")]
    cols = (("mode", "mode", ""), ("kind", "kind", ""), ("N", "world_size", "d"),
            ("batch/worker", "batch_per_worker", "d"), ("step (ms)", "step_time_s", ".1f"),
            ("samples/s", "samples_per_s", ".1f"), ("speedup", "speedup", ".2f"),
            *(efficiencies[::-1] if baseline == "node" else efficiencies),
            ("TFLOP/s per worker", "tflops_per_worker", ".3f"),
            ("fraction of peak", "fraction_of_peak", ".3f"))
    body = []
    for row in rows:
        cells = []
        for _, key, spec in cols:
            value = row[key] * 1e3 if key == "step_time_s" and _number(row[key]) else row[key]
            cells.append(format(value, spec) if isinstance(value, str) or _number(value) else "-")
        body.append(cells)
    widths = [max([len(h)] + [len(cells[i]) for cells in body]) for i, (h, _, _) in enumerate(cols)]

    def line(cells: list[str]) -> str:
        aligned = (c.ljust(w) if spec == "" else c.rjust(w) for c, w, (*_, spec) in zip(cells, widths, cols))
        return "  ".join(aligned)

    return "\n".join([line([h for h, _, _ in cols])] + [line(cells) for cells in body])


def format_sensitivity(rows: list[dict[str, Any]]) -> list[str]:
    """One line per mode: the predicted efficiency at the largest size, and what it becomes with
    the jitter halved or doubled and the links' bandwidth 20% lower or higher."""
    lines = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        predicted = [r for r in rows if r["mode"] == mode and r["kind"] == "predicted"]
        if not predicted:
            continue
        r = max(predicted, key=lambda row: row["world_size"])
        lines.append(
            f"sensitivity, {mode} at N={r['world_size']}: efficiency {r['scaling_efficiency']:.3f}; "
            f"cv/2 {r['efficiency_cv_half']:.3f}, 2cv {r['efficiency_cv_double']:.3f}; "
            f"links -20% {r['efficiency_links_minus_20pct']:.3f}, "
            f"+20% {r['efficiency_links_plus_20pct']:.3f}")
    return lines


def write_report(study_dir: Path, rows: list[dict[str, Any]], meta: dict[str, Any],
                 per_step: dict[str, dict[str, list[float]]] | None = None,
                 title: str = "ddtrain scaling study") -> dict[str, Path]:
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": study_dir / "scaling.csv", "json": study_dir / "scaling.json",
             "png": study_dir / "scaling.png", "tb": study_dir / "tb"}
    write_csv(paths["csv"], rows)
    write_json(paths["json"], rows, meta)
    plot(paths["png"], rows, title)
    write_tensorboard(paths["tb"], rows, meta, per_step)
    return paths
