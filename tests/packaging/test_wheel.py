"""The wheel ships every Hydra config, and building it says nothing worth a warning."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_holds_every_config_and_builds_without_warnings(tmp_path):
    # --no-build-isolation: build with this environment's setuptools, so no network is needed.
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert [ln for ln in output.splitlines() if "warning" in ln.lower()] == []
    (wheel,) = tmp_path.glob("ddtrain-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.yaml"))
    assert "configs/hydra/job_logging/ddtrain.yaml" in configs  # the glob reached the nested group
    missing = [c for c in configs if f"ddtrain/{c}" not in shipped]
    assert missing == []
