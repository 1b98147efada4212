"""One training job on this rank: detect the launch, check inputs, start the group, train, close.

How it ends: 0 after the last step, or after a stop signal once the checkpoint is written;
2 for bad input (a config, a data file, a checkpoint that cannot be resumed, and a sample that
cannot be read mid-run, on every rank); 1 when this rank fails, or all ranks detect the same
failure (replica mismatch, divergence, a NaN stop); 3 when another rank died or failed (the
fault monitor names it). A failing rank tells the others at once, so nobody waits for a
collective timeout.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch

from ddtrain.config import TrainConfig
from ddtrain.data import spec_of
from ddtrain.dist.env import LaunchEnv, detect_launch_env
from ddtrain.dist.group import DistContext, init_distributed, shutdown
from ddtrain.errors import (
    EXIT_BAD_INPUT,
    EXIT_JOB_ERROR,
    BadSample,
    JobError,
    bad_sample_line,
    fail,
    one_line,
    report,
)
from ddtrain.fault.monitor import bad_input, exit_on_loss, start_monitor
from ddtrain.fault.notice import tell_launcher
from ddtrain.fault.signals import StopRequest
from ddtrain.trainer import build_datasets, make_model, train

log = logging.getLogger("ddtrain")


def setup_logging(env: LaunchEnv, run_dir: Path | None) -> None:
    """Rank 0 logs INFO to stderr and to ``train.log``; the other ranks only warnings."""
    fmt = logging.Formatter(f"[%(asctime)s][rank {env.rank}][%(levelname)s] %(message)s", "%H:%M:%S")
    log.handlers.clear()
    log.propagate = False
    log.setLevel(logging.INFO if env.is_main else logging.WARNING)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    log.addHandler(console)
    if env.is_main and run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(run_dir / "train.log")
        file.setFormatter(fmt)
        log.addHandler(file)


def cpu_threads(requested: int, local_world_size: int) -> int:
    """Intra-op threads per rank: ranks on one node share its cores instead of fighting over them."""
    from ddtrain.launcher.cores import usable_cpus

    if requested > 0:
        return requested
    return max(1, usable_cpus() // max(1, local_world_size))


def run(cfg: TrainConfig, run_dir: Path) -> None:
    env = detect_launch_env(os.environ)
    setup_logging(env, run_dir)
    torch.set_num_threads(cpu_threads(cfg.trainer.threads, env.local_world_size))

    # Everything that can be wrong with the inputs is found here, before any process group:
    # the data files, and the model (a user's class may refuse its keyword arguments).
    try:
        dataset, val_dataset = build_datasets(cfg)
        model = make_model(cfg, spec_of(dataset))
    except ValueError as e:
        # Files can differ between nodes, so each failing rank speaks for itself.
        fail(str(e), env.rank, same_on_all_ranks=env.world_size == 1)

    ctx = init_distributed(
        env, backend=cfg.comm.backend, device=cfg.trainer.device, timeout_s=cfg.comm.timeout_s
    )
    try:
        monitor = start_monitor(ctx, cfg.comm.timeout_s)
    except (OSError, RuntimeError) as e:  # a rank that never connected, an unreachable rank 0
        report(one_line(e), ctx.rank, same_on_all_ranks=False)
        _leave(EXIT_JOB_ERROR)
    log.info(
        "run dir %s; %d rank(s) via %s, backend %s, device %s",
        run_dir, ctx.world_size, env.launcher, ctx.backend or "none", ctx.device,
    )
    stop = StopRequest().install()
    try:
        result = train(cfg, ctx, run_dir, dataset=dataset, val_dataset=val_dataset, model=model, stop=stop)
        history, stopped_by, checkpoint = result.history, result.stopped_by, result.checkpoint
        del result  # the engine (and its hooks) must go before the group does: see shutdown()
    except JobError as e:
        # Every rank raised the same error from the same gathered data: leave, quietly.
        monitor.close()
        report(str(e), ctx.rank)
        _leave(e.exit_code)
    except BaseException as e:  # noqa: BLE001 - any failure of this rank must stop the others
        _die(e, ctx, monitor)
    finally:
        stop.uninstall()
    shutdown(ctx)
    monitor.close()
    if ctx.is_main and history:
        last = history[-1]
        log.info(
            "done: step %d loss %.4f, %.1f samples/s, step %.4f s",
            last["step"], last["loss"], last["samples_per_s"], last["step_time_s"],
        )
        log.info("metrics: %s", run_dir / "metrics.jsonl")
        if cfg.tensorboard:
            log.info("TensorBoard: tensorboard --logdir %s", run_dir / "tb")
    if ctx.is_main and checkpoint is not None:
        log.info("checkpoint: %s", checkpoint)
    if stopped_by:
        log.warning("stopped early by %s; rerun with trainer.resume=auto to continue", stopped_by)


def _leave(code: int) -> None:
    """Exit now. Not sys.exit: the process group and the engine's hooks are still alive on this
    path, and tearing them down at interpreter exit can abort the process (see shutdown())."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    tell_launcher(code)
    os._exit(code)


def _die(e: BaseException, ctx: DistContext, monitor) -> None:
    """This rank's training raised. If a peer's death caused it (the collective failed because
    the other end is gone), say so; otherwise print the traceback and tell everyone why."""
    if isinstance(e, SystemExit):
        raise e
    # A collective with a dead peer can fail here a moment before the monitor hears of the death.
    peer = monitor.wait_lost(1.0)
    if peer is not None:
        exit_on_loss(ctx.rank)(*peer)
    if isinstance(e, BadSample):  # bad input found mid-run: its line says the fix, no traceback
        reason = bad_sample_line(e)
        monitor.report_failure(bad_input(reason))
        report(reason, ctx.rank, same_on_all_ranks=False)
        _leave(EXIT_BAD_INPUT)
    reason = "interrupted (Ctrl-C)" if isinstance(e, KeyboardInterrupt) else one_line(e)
    monitor.report_failure(f"{reason} (see rank {ctx.rank}'s log for the traceback)")
    log.error("this rank failed:", exc_info=e)  # stderr, and train.log on rank 0
    report(reason, ctx.rank, same_on_all_ranks=False)
    _leave(130 if isinstance(e, KeyboardInterrupt) else EXIT_JOB_ERROR)
