"""launch/bench_core_speed.py: its table from a short run, and the slow-spell arithmetic."""

from __future__ import annotations

import importlib.util
import os

from tests.cli_helpers import REPO, run_launch_script


def _module():
    spec = importlib.util.spec_from_file_location("bench_core_speed", REPO / "launch" / "bench_core_speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_longest_slow_spell_spans_consecutive_slow_samples_only():
    spell = _module().longest_slow_spell
    samples = [(0.0, 100.0), (1.0, 50.0), (2.0, 50.0), (3.5, 50.0), (4.0, 100.0), (5.0, 50.0), (6.0, 50.0)]
    assert spell(samples, 80.0) == 2.5  # 1.0 .. 3.5, not the later 5.0 .. 6.0
    assert spell(samples, 10.0) == 0.0


def test_a_short_run_reports_every_core_once_per_round(tmp_path):
    proc = run_launch_script("bench_core_speed.py", "--seconds", "0.3", "--rounds", "2", "--size", "64",
                             cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines()
            if line.startswith("| ") and not line.startswith("| core")]
    cores = sorted(os.sched_getaffinity(0))
    assert [(int(r[0]), int(r[1])) for r in rows] == (
        [(c, 1) for c in cores] + [(c, 2) for c in reversed(cores)])
    for r in rows:
        samples, median, p10, p90 = int(r[2]), float(r[3]), float(r[4]), float(r[5])
        assert samples > 0 and 0 < p10 <= median <= p90
    assert "largest p10-p90 spread" in proc.stdout and "the rows' medians:" in proc.stdout
