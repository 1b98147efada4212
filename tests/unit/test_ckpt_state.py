"""What a checkpoint holds and when a run may continue from one: one process, no group."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ddtrain.ckpt import catalog
from ddtrain.ckpt.file import decode, encode
from ddtrain.ckpt.manager import Checkpointer, checkpoint_dir
from ddtrain.ckpt.state import ResumeRefused, capture, check_resume, restore
from ddtrain.config import OptimConfig
from ddtrain.data import build_dataset
from ddtrain.optim import lr_factor
from ddtrain.registry import input_kind
from ddtrain.trainer import build_replica
from tests.gloo.workloads import single_process, tiny


def cfg_with(ckpt_dir=None, **trainer):
    cfg = tiny("mlp", batch=8, steps=10)
    return dataclasses.replace(cfg, trainer=dataclasses.replace(
        cfg.trainer, ckpt_dir=None if ckpt_dir is None else str(ckpt_dir), **trainer))


def replica(cfg):
    dataset = build_dataset(cfg.data, input_kind(cfg.model.name, cfg.data.name), cfg.seed)
    return build_replica(cfg, single_process(), dataset)


def test_a_captured_state_survives_the_safe_loader_and_restores_everything():
    cfg = cfg_with()
    rep = replica(cfg)
    torch.manual_seed(5)
    state = decode(encode(capture(4, rep, single_process(), cfg, {"nonfinite_skipped": 2})))
    assert state["step"] == 4 and state["samples_seen"] == 4 * 8 and state["global_batch"] == 8
    assert state["rng"].shape[0] == 1 and state["counters"] == {"nonfinite_skipped": 2}
    expected = torch.rand(3)  # what the RNG gives right after the capture

    other = replica(dataclasses.replace(cfg, seed=99))
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(1.0)
    assert restore(state, other, single_process(), cfg, "x") == 4
    for a, b in zip(rep.model.state_dict().values(), other.model.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(torch.rand(3), expected)


def test_check_resume_refuses_what_cannot_continue_and_warns_about_the_rest():
    cfg = cfg_with()
    state = capture(4, replica(cfg), single_process(), cfg, {})
    assert check_resume(state, cfg, 1, "c") == []
    longer = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, steps=20, resume="/x"))
    assert check_resume(state, longer, 1, "c") == [
        "resuming with 1 changed setting(s): trainer.steps: 10 -> 20"]  # resume=/x is bookkeeping
    with pytest.raises(ResumeRefused, match="global batch of 8 .* this run has 16 .2 x 8 x 1."):
        check_resume(state, cfg, 2, "c")
    adamw = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, name="adamw"))
    with pytest.raises(ResumeRefused, match="optimizer state is sgd's and this run uses optim=adamw"):
        check_resume(state, adamw, 1, "c")
    short = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, steps=3))
    with pytest.raises(ResumeRefused, match="at step 4, beyond trainer.steps=3"):
        check_resume(state, short, 1, "c")
    with pytest.raises(ResumeRefused, match="format 0"):
        check_resume({**state, "format": 0}, cfg, 1, "c")


def test_a_model_that_does_not_fit_is_refused_in_one_line():
    cfg = cfg_with()
    state = capture(4, replica(cfg), single_process(), cfg, {})
    wider = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, hidden=64))
    with pytest.raises(ResumeRefused) as e:
        restore(state, replica(wider), single_process(), wider, "c.ckpt")
    assert "\n" not in str(e.value) and "its model does not fit this one" in str(e.value)
    assert e.value.exit_code == 2


def test_checkpoint_dir_and_saving_policy(tmp_path):
    assert checkpoint_dir(cfg_with(), tmp_path) == tmp_path / "checkpoints"
    assert checkpoint_dir(cfg_with(), None) is None
    assert checkpoint_dir(cfg_with(tmp_path / "c"), None) == tmp_path / "c"
    assert checkpoint_dir(cfg_with(checkpoint=False), tmp_path) is None
    ckpt = Checkpointer(cfg_with(ckpt_every=5), single_process(), tmp_path)
    assert [s for s in range(1, 11) if ckpt.due(s, False)] == [5, 10]
    assert ckpt.due(3, True)  # rank 0's clock said so, through the step's agreement
    assert not Checkpointer(cfg_with(ckpt_every=5), single_process(), None).due(5, True)


def test_a_fresh_run_refuses_a_directory_holding_another_run_s_checkpoints(tmp_path):
    cfg = cfg_with(tmp_path, ckpt_every=2, ckpt_keep=2)
    ckpt = Checkpointer(cfg, single_process(), tmp_path)
    rep = replica(cfg)
    for step in (2, 4, 6):
        ckpt.save(step, rep, {})
    assert [s for s, _ in catalog.list_checkpoints(tmp_path)] == [6, 4]  # the newest 2 kept
    never = cfg_with(tmp_path, resume="never")
    with pytest.raises(ResumeRefused, match="already holds 2 checkpoint.s. up to step 6 from an earlier run"):
        Checkpointer(never, single_process(), tmp_path).resume(replica(never))
    step, counters = Checkpointer(cfg, single_process(), tmp_path).resume(replica(cfg))
    assert step == 6 and counters == {"nonfinite_skipped": 0}


def test_an_explicit_resume_path_that_is_missing_or_empty_is_refused(tmp_path):
    for target, message in [(tmp_path / "nope", "no such file or directory"),
                            (tmp_path, "holds no valid checkpoint")]:
        cfg = cfg_with(resume=str(target))
        with pytest.raises(ResumeRefused, match=message):
            Checkpointer(cfg, single_process(), None).resume(replica(cfg))


def test_the_data_position_is_the_loaders_and_a_changed_data_set_is_refused():
    cfg = cfg_with()
    rep = replica(cfg)
    rep.loader.step = 4
    state = decode(encode(capture(4, rep, single_process(), cfg, {})))
    assert state["data"]["step"] == 4 and state["data"]["dataset_len"] == len(rep.loader.dataset)
    again = replica(cfg)
    assert restore(state, again, single_process(), cfg, "x") == 4 and again.loader.step == 4
    # Accumulating the same global batch in two micro-steps: the loader continues at micro-step 8.
    accum = dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, grad_accum=2),
                                data=dataclasses.replace(cfg.data, batch_size=4))
    halves = replica(accum)
    restore(state, halves, single_process(), accum, "x")
    assert halves.loader.step == 8
    two = torch.cat([halves.loader.indices(8), halves.loader.indices(9)])
    assert torch.equal(two, again.loader.indices(4))
    smaller = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, samples=cfg.data.samples // 2))
    with pytest.raises(ResumeRefused, match=r"a data set of \d+ samples and this run's data=synthetic"):
        restore(state, replica(smaller), single_process(), smaller, "x")


def test_the_first_update_after_resuming_uses_this_runs_schedule():
    # A cosine schedule past its warm-up: the LR at step 6 depends on trainer.steps, and the
    # checkpoint's optimizer carries the rate its own run (10 steps) set. Extended to 40 steps
    # and with another optim.lr, the resumed run must update at its own rate from the first step.
    cosine = dataclasses.replace(cfg_with(), optim=OptimConfig(name="sgd", lr=0.05, schedule="cosine",
                                                               warmup_steps=2, min_lr_ratio=0.1))
    rep = replica(cosine)
    for _ in range(6):
        rep.optimizer.step()
        rep.scheduler.step()
    state = decode(encode(capture(6, rep, single_process(), cosine, {})))
    longer = dataclasses.replace(cosine, optim=dataclasses.replace(cosine.optim, lr=0.02),
                                 trainer=dataclasses.replace(cosine.trainer, steps=40))
    again = replica(longer)
    restore(state, again, single_process(), longer, "x")
    expected = 0.02 * lr_factor(6, 40, longer.optim)
    assert rep.optimizer.param_groups[0]["lr"] != pytest.approx(expected)  # the test can tell them apart
    assert [g["lr"] for g in again.optimizer.param_groups] == pytest.approx([expected])
    again.optimizer.step()
    again.scheduler.step()
    assert again.scheduler.get_last_lr() == pytest.approx([0.02 * lr_factor(7, 40, longer.optim)])
