"""Replica checks on real Gloo ranks: a start-up mismatch and a divergence each stop every rank
with the same documented message."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ddtrain.config import TrainConfig, to_flat_dict
from ddtrain.errors import JobError
from ddtrain.fault.replica import DIVERGENCE_FIX, STARTUP_FIX, check_replicas, verify_replicas
from ddtrain.models.mlp import MLPConfig
from tests.gloo.harness import run_ranks

HIDDEN = 8


def mlp(hidden: int = HIDDEN, *, extra: bool = False) -> nn.Sequential:
    torch.manual_seed(0)  # the same weights on every rank, as the trainer's seeding gives
    layers = {"inp": nn.Linear(4, hidden), "act": nn.ReLU()}
    if extra:
        layers["mid"] = nn.Linear(hidden, hidden)
    return nn.Sequential(OrderedDict(layers, out=nn.Linear(hidden, 3)))


def startup(ctx, change: str | None, changed_ranks: tuple[int, ...] = ()) -> str | None:
    """Each rank builds its replica, ``changed_ranks`` a different one; returns the JobError text."""
    odd = ctx.rank in changed_ranks
    hidden = 2 * HIDDEN if odd and change in ("width", "config") else HIDDEN
    model = mlp(hidden, extra=odd and change == "extra")
    cfg = TrainConfig(model=MLPConfig(hidden=hidden if change == "config" else HIDDEN))
    try:
        check_replicas(ctx, model, to_flat_dict(cfg))
    except JobError as e:
        return str(e)
    return None


def diverge(ctx, bad_ranks: tuple[int, ...]) -> tuple[str | None, str | None]:
    """Verify once while identical, then nudge one weight on ``bad_ranks`` by one ulp and verify."""
    model = mlp()
    out = []
    for step in (10, 20):
        if step == 20 and ctx.rank in bad_ranks:
            with torch.no_grad():
                w = model.out.weight
                w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(1.0))
        try:
            verify_replicas(ctx, model, step)
            out.append(None)
        except JobError as e:
            out.append(str(e))
    return tuple(out)


def test_the_same_replica_on_every_rank_passes():
    assert run_ranks(2, startup, None) == [None, None]


def test_a_wider_model_on_the_last_rank_stops_every_rank_with_one_message():
    msgs = run_ranks(3, startup, "width", (2,))
    assert msgs == [msgs[0]] * 3  # the same text on every rank, the identical ones included
    assert msgs[0] == (
        "replica mismatch at start-up, rank 2 vs rank 0: 3 of 4 parameters differ (first: inp.weight "
        f"has shape [8, 4] on rank 0 but [16, 4] on rank 2); {STARTUP_FIX}"
    )


def test_an_extra_layer_on_one_rank_stops_every_rank_with_one_message():
    msgs = run_ranks(2, startup, "extra", (1,))
    assert msgs[0] == msgs[1] == (
        "replica mismatch at start-up, rank 1 vs rank 0: 2 of 4 parameters differ (first: mid.weight "
        f"[8, 8] float32 exists only on rank 1); {STARTUP_FIX}"
    )


def test_a_different_config_on_one_rank_is_named_by_its_key():
    msgs = run_ranks(2, startup, "config", (1,))
    assert msgs[0] == msgs[1] == (
        "replica mismatch at start-up, rank 1 vs rank 0: config key model.hidden is 8 on rank 0 but 16 "
        "on rank 1, and 3 of 4 parameters differ (first: inp.weight has shape [8, 4] on rank 0 but "
        f"[16, 4] on rank 1); {STARTUP_FIX}"
    )


def test_one_ulp_of_divergence_on_rank_1_stops_every_rank_naming_the_parameter():
    results = run_ranks(2, diverge, (1,))
    assert [r[0] for r in results] == [None, None]  # identical replicas: nothing raised
    assert results[0][1] == results[1][1] == (
        "replicas diverged at step 20: rank 1 differs from rank 0 in 1 of 4 parameters, first "
        f"out.weight; {DIVERGENCE_FIX}"
    )


def test_divergence_on_two_of_three_ranks_names_both():
    results = run_ranks(3, diverge, (1, 2))
    assert [r[1] for r in results] == [results[0][1]] * 3
    assert results[0][1].startswith("replicas diverged at step 20: ranks 1, 2 differ from rank 0 in 1 of 4")
