"""``trainer.compile=true`` on real Gloo ranks: buckets still launch during backward, and the
result matches the uncompiled run. Inductor's C++ backend compiles here; the first step pays
for it (tens of seconds cold, once per rank)."""

from __future__ import annotations

import dataclasses

from ddtrain.compile import regions
from ddtrain.models.gpt import GPT
from ddtrain.trainer import train
from tests.gloo.harness import run_ranks
from tests.gloo.test_equivalence import FP32, B, assert_params_close
from tests.gloo.workloads import params_of, single_process, tiny, train_with_events


def _compiled(cfg):
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, compile=True))


def test_compiled_blocks_keep_the_overlap_and_match_the_eager_run():
    cfg = tiny("gpt", batch=B, steps=2)
    rank0 = run_ranks(2, train_with_events, _compiled(cfg))[0]
    events = rank0["events"]
    n_params, n_buckets = sum(rank0["buckets"]), len(rank0["buckets"])
    assert n_buckets >= 2
    step2 = events[n_params + n_buckets:]  # the first step also compiles; the second is steady
    first_launch = step2.index(("launch", 0))
    last_grad = max(i for i, (kind, _) in enumerate(step2) if kind == "grad")
    # Gradients of earlier blocks were still arriving after bucket 0's all-reduce started.
    assert first_launch < last_grad, step2
    assert [idx for kind, idx in events if kind == "launch"] == list(range(n_buckets)) * 2
    # The same parameters as one eager process with the global batch (compiled kernels may
    # fuse and reorder float arithmetic, hence a tolerance, the one the eager runs meet too).
    eager = params_of(train(tiny("gpt", batch=2 * B, steps=2), single_process()))
    assert_params_close(rank0["params"], eager, **FP32, what="compiled N=2")


def test_the_regions_are_the_blocks_that_own_parameters():
    from ddtrain.data.spec import DataSpec
    from ddtrain.models.gpt import GPTConfig

    model = GPT(GPTConfig(layers=3), DataSpec(kind="tokens", seq_len=8, vocab_size=16))
    blocks = regions(model)
    # Embeddings, each transformer block, the final norm and the head: not the model itself.
    assert model not in blocks and all(any(True for _ in b.parameters()) for b in blocks)
    assert sum(isinstance(b, type(model.blocks[0])) for b in blocks) == 3
    assert {id(p) for b in blocks for p in b.parameters()} == {id(p) for p in model.parameters()}
