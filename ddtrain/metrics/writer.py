"""Run records: ``metrics.jsonl`` and TensorBoard, written by rank 0 alone.

Which rank writes is decided once, at construction (``make_writer``): other ranks get a
``NullWriter`` and the loop never asks "am I rank 0?".
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

# jsonl key -> TensorBoard tag. Tags are grouped by section and carry their unit.
TAGS = {
    "loss": "loss/train",
    "lr": "optim/lr",
    "samples_per_s": "throughput/samples(per_s)",
    "tokens_per_s": "throughput/tokens(per_s)",
    "achieved_tflops": "throughput/achieved(TFLOP_per_s)",
    "step_time_s": "time/step(s)",
    "compute_s": "time/compute(s)",
    "forward_s": "time/forward(s)",
    "backward_s": "time/backward(s)",
    "comm_exposed_s": "time/comm_exposed(s)",
    "data_s": "time/data(s)",
    "optimizer_s": "time/optimizer(s)",
    "grad_norm": "optim/grad_norm",
    "skipped_steps": "optim/skipped_steps(count)",
    "val_loss": "loss/val",
    "val_accuracy": "accuracy/val(fraction)",
}


def json_safe(obj: Any) -> Any:
    """NaN/inf -> None, recursively: bare NaN is not JSON, and jq or a browser would choke."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class NullWriter:
    def log(self, record: dict[str, Any]) -> None:
        pass

    def text(self, tag: str, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def rewind_jsonl(path: Path, step: int) -> int:
    """Keep the records of steps <= ``step`` in ``path``; move later ones (logged after the
    checkpoint a resumed run restarts from, and about to be logged again) to
    ``<name>.discarded.jsonl`` beside it, so nothing is lost and the curve has no doubled steps.
    Returns how many were moved."""
    if not path.exists():
        return 0
    keep, later = [], []
    for line in path.read_text().splitlines(keepends=True):
        try:
            record_step = json.loads(line).get("step", 0)
        except ValueError:
            record_step = step + 1  # a torn last line from a crash: not a record to keep
        (keep if record_step <= step else later).append(line)
    if later:
        with open(path.with_suffix(".discarded.jsonl"), "a") as f:
            f.writelines(later)
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(keep))
        tmp.replace(path)
    return len(later)


def after_earlier_event_files(tb_dir: Path) -> None:
    """Wait, if need be, until a new event file's name sorts after every one in ``tb_dir``.

    TensorBoard reads a run's event files in name order, and a name starts with the second the
    file was made. A resumed segment's file must come after the earlier segments' files, or its
    purge of their steps past the checkpoint is read first and those steps show again. Within one
    second the rest of the name (host, pid, a per-process counter) decides, compared as strings,
    so "…9" sorts after "…10": the next second is the only safe order. A restart rarely comes
    within a second of the last file, so this almost never waits.
    """
    stamps = [int(part) for f in tb_dir.glob("events.out.tfevents.*")
              if (part := f.name.split(".")[3]).isdigit()]
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if wait > 0:
            time.sleep(wait)


class MetricsWriter:
    def __init__(self, run_dir: Path, hparams: dict[str, Any], tensorboard: bool = True,
                 resume_step: int | None = None):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = run_dir / "metrics.jsonl"
        if resume_step is not None:
            rewind_jsonl(self.jsonl_path, resume_step)
        # Line-buffered: a crash loses at most the line being written.
        self._jsonl = open(self.jsonl_path, "a", buffering=1)
        self.tb_dir = run_dir / "tb" if tensorboard else None
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            from torch.utils.tensorboard.summary import hparams as hparams_summary

            # purge_step: TensorBoard hides events a previous segment logged past the checkpoint.
            purge = None if resume_step is None else resume_step + 1
            if resume_step is not None:
                after_earlier_event_files(self.tb_dir)
            self._tb = SummaryWriter(log_dir=str(self.tb_dir), purge_step=purge)
            if resume_step is not None:
                return  # the first segment wrote the hparams table
            # The hparams plugin reads the metric values from the scalars logged under these
            # tags in the same run, so the config table links to the live curves.
            metrics = {TAGS["loss"]: 0.0, TAGS["samples_per_s"]: 0.0, TAGS["step_time_s"]: 0.0}
            for summary in hparams_summary(hparams, metrics):
                self._tb.file_writer.add_summary(summary)

    def log(self, record: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        if self._tb is None:
            return
        step = record["step"]
        for key, tag in TAGS.items():
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(tag, value, step)

    def text(self, tag: str, text: str) -> None:
        if self._tb is not None:
            # Markdown: indent by four spaces so YAML shows as a code block.
            self._tb.add_text(tag, "    " + text.replace("\n", "\n    "))

    def close(self) -> None:
        self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def make_writer(is_main: bool, run_dir: Path | None, hparams: dict[str, Any], tensorboard: bool,
                resume_step: int | None = None):
    if is_main and run_dir is not None:
        return MetricsWriter(run_dir, hparams, tensorboard, resume_step)
    return NullWriter()
