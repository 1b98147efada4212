"""Every Triton kernel compiled for Hopper (sm_90) and Ampere (sm_80) on this CPU-only machine,
with the resources the cubins ask for; the recurrence planner's figures are these."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ddtrain.kernels.offline import (
    CELLS,
    DTYPES,
    HIDDEN,
    TARGETS,
    Config,
    Resources,
    largest_persistent_hidden,
    measured_table,
    row,
)
from ddtrain.kernels.rnn_plan import RESOURCES_FILE, SPILL_ALLOWANCE


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("compiled") / "rows.json"
    command = [sys.executable, "-m", "ddtrain.kernels.offline", "--json", str(out), "--jobs", "2"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3000)
    rows = json.loads(out.read_text()) if out.is_file() else []
    return proc, rows


def _config(r: dict) -> Config:
    return Config(**{k: r[k] for k in Config.__dataclass_fields__})


def test_every_kernel_target_dtype_and_shape_compiles(compiled):
    proc, rows = compiled
    assert rows, proc.stderr[-3000:]
    assert not [r for r in rows if r["error"]], [r["error"] for r in rows if r["error"]][:3]
    for name, target in TARGETS.items():
        for cell, act in CELLS:
            for mm in ("fma", "dot"):
                for dtype in DTYPES:
                    largest = largest_persistent_hidden(target, cell, mm, dtype)
                    for hidden in (*HIDDEN, largest):
                        shape = (name, cell, act, mm, dtype, hidden)
                        kernels = {r["kernel"] for r in rows if (r["target"], r["cell"], r["act"], r["mm"],
                                                                 r["dtype"], r["hidden"]) == shape}
                        assert kernels == {"recurrence_fwd", "recurrence_bwd"}, shape
        packing = {(r["dtype"], r["pack"]) for r in rows
                   if r["target"] == name and r["kernel"] == "move_blocks"}
        assert packing == {(d, p) for d in DTYPES for p in (True, False)}
    assert all(r["registers"] > 0 for r in rows)


def test_nothing_the_plan_runs_persistent_spills_or_overflows_the_gpu(compiled):
    proc, rows = compiled
    planned = [r for r in rows if r["path"] == "persistent" and r["planned"]]
    assert planned  # the table is not empty of persistent kernels
    assert not [r["problems"] for r in rows if r["problems"]]
    # Spills land in the stack frame (LOCAL stays 0); a few temporaries are allowed, the slice is not.
    assert all(r["stack"] + r["local"] <= SPILL_ALLOWANCE and r["co_resident"] for r in planned)
    # Every kernel the plan refuses has a reason in its own shape's compiles (forward or backward):
    # a persistent one spills past the allowance, or one asks for more shared memory than the GPU has.
    def over(r: dict) -> bool:
        return (r["path"] == "persistent" and r["stack"] + r["local"] > SPILL_ALLOWANCE
                or r["shared"] > TARGETS[r["target"]].shared_per_sm)

    refused: dict[tuple, bool] = {}
    for r in rows:
        if not r["planned"]:
            kernel = (r["target"], r["cell"], r["act"], r["mm"], r["dtype"], r["hidden"], r["path"],
                      r["block_h"], r["num_warps"])
            refused[kernel] = refused.get(kernel, False) or over(r)
    assert refused and all(refused.values()), [k for k, why in refused.items() if not why]
    # Shared memory refuses some tensor-core kernels outright (on both targets).
    assert {k[0] for k, _ in refused.items() if k[3] == "dot"} == set(TARGETS)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_planners_measured_figures_are_these_compiles(compiled):
    _, rows = compiled
    fields = ("registers", "stack", "local", "shared", "error")
    fresh = measured_table([row(_config(r), Resources(*(r[k] for k in fields))) for r in rows])
    shipped = json.loads(RESOURCES_FILE.read_text())
    assert shipped == fresh, ("ddtrain/kernels/kernel_resources.json is stale: rerun "
                              "python -m ddtrain.kernels.offline --write")
