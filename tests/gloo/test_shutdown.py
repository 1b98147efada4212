"""``ddtrain.shutdown()`` joins the Gloo group's worker threads before the interpreter exits.

A worker still freeing a finished collective while the interpreter finalises aborts the process
("terminate called without an active exception"); in a job that happens on a few exits in a
hundred. Counting the process's threads shows whether the group was really freed: after
shutdown there are as many as before ``init()``, with ddtrain's wrapper and with torch's DDP.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.cli_helpers import REPO, clean_env

SCRIPT = """
import os, sys
import torch, torch.distributed as dist
from torch import nn
import ddtrain

def threads():
    return len(os.listdir("/proc/self/task"))

before = threads()
ctx = ddtrain.init(backend="gloo", device="cpu")
net = nn.Linear(4, 4)
model = ddtrain.DataParallel(net) if sys.argv[1] == "ddtrain" else nn.parallel.DistributedDataParallel(net)
model(torch.ones(2, 4)).sum().backward()
total = torch.ones(())
dist.all_reduce(total)  # a Python-owned tensor in the last collective, as a loss report has
during = threads()
del model
ddtrain.shutdown()
with open(os.path.join(sys.argv[2], f"rank{ctx.rank}"), "w") as f:  # stdout would interleave
    f.write(f"{before} {during} {threads()} {total.item():g}")
"""


@pytest.mark.parametrize("wrapper", ["ddtrain", "ddp"])
def test_shutdown_leaves_no_group_thread_behind(tmp_path, wrapper):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    env = {**clean_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*torchrun, str(script), wrapper, str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        before, during, after, total = (tmp_path / f"rank{rank}").read_text().split()
        assert total == "2"  # the collective ran across both ranks
        assert int(during) > int(before)  # the group's threads, while it lives
        assert int(after) == int(before), (before, during, after)
