"""When checkpoints are written, where, which one a run resumes from, and how many are kept.

Rank 0 alone touches the files. To resume, rank 0 picks the checkpoint and broadcasts its bytes,
so the other ranks need no shared file system and every rank loads exactly the same state; each
rank verifies the checksum and loads with the safe loader itself.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ddtrain.ckpt import catalog
from ddtrain.ckpt.file import CheckpointError, decode, encode, read_verified, write_atomic
from ddtrain.ckpt.state import ResumeRefused, capture, check_resume, restore
from ddtrain.config import TrainConfig
from ddtrain.dist.group import DistContext, broadcast_bytes

log = logging.getLogger(__name__)

# First byte of what rank 0 broadcasts at resume time.
_FRESH, _FOUND, _REFUSED = b"0", b"1", b"2"


def checkpoint_dir(cfg: TrainConfig, run_dir: Path | None) -> Path | None:
    """``trainer.ckpt_dir``, else ``<run dir>/checkpoints``; None: this run keeps none."""
    t = cfg.trainer
    if not t.checkpoint:
        return None
    if t.ckpt_dir is not None:
        return Path(t.ckpt_dir)
    return None if run_dir is None else run_dir / "checkpoints"


class Checkpointer:
    def __init__(self, cfg: TrainConfig, ctx: DistContext, directory: Path | None):
        self.cfg = cfg
        self.ctx = ctx
        self.directory = directory
        self._last_save = time.monotonic()

    # ------------------------------------------------------------------ resume
    def resume(self, rep) -> tuple[int, dict[str, int]]:
        """Load the checkpoint ``trainer.resume`` names into ``rep``: the step to start from and
        the run's counters (fresh: 0 and zeros).

        A collective: every rank calls it and gets the same answer (or the same ResumeRefused).
        """
        fresh = 0, {"nonfinite_skipped": 0}
        mode = self.cfg.trainer.resume
        if self.directory is None and mode in ("never", "auto"):
            return fresh
        packet = self._pick(mode) if self.ctx.is_main else None
        packet = broadcast_bytes(self.ctx, packet)
        kind, body = packet[:1], packet[1:]
        if kind == _FRESH:
            return fresh
        if kind == _REFUSED:
            raise ResumeRefused(body.decode())
        source, _, data = body.partition(b"\n")
        source = source.decode()
        try:
            state = decode(data, source)
        except CheckpointError as e:  # cannot happen for bytes rank 0 decoded; kept for safety
            raise ResumeRefused(str(e)) from None
        for warning in check_resume(state, self.cfg, self.ctx.world_size, source):
            if self.ctx.is_main:  # every rank reaches the same verdict; one says it
                log.warning("%s", warning)
        step = restore(state, rep, self.ctx, self.cfg, source)
        log.info("resumed from %s: step %d of %d (%d samples seen)", source, step,
                 self.cfg.trainer.steps, state["samples_seen"])
        return step, {**fresh[1], **state.get("counters", {})}

    def _pick(self, mode: str) -> bytes:
        """Rank 0: the packet to broadcast: fresh, a checkpoint's bytes, or a refusal."""
        try:
            if mode == "never":
                self._refuse_mixing()
                return _FRESH
            if mode == "auto":
                found = self._newest(self.directory, required=False)
            else:
                path = Path(mode)
                if path.is_dir():
                    found = self._newest(path, required=True)
                elif path.exists():
                    found = path, read_verified(path)
                    decode(found[1], str(path))  # refuse an unsafe payload here, before the others
                else:
                    return _REFUSED + (f"trainer.resume={mode}: no such file or directory; give a "
                                       "checkpoint file or directory, or auto / never").encode()
        except (CheckpointError, ResumeRefused) as e:
            return _REFUSED + str(e).encode()
        if found is None:
            log.info("no checkpoint in %s: starting at step 0", self.directory)
            return _FRESH
        path, data = found
        return _FOUND + str(path).encode() + b"\n" + data

    def _refuse_mixing(self) -> None:
        """A fresh run must not write into a directory holding another run's checkpoints: the
        newest-K rule would soon delete the new ones in favour of the old, higher steps."""
        if self.directory is None:
            return
        old = catalog.list_checkpoints(self.directory)
        if old:
            raise ResumeRefused(
                f"trainer.resume=never, but {self.directory} already holds {len(old)} checkpoint(s) up "
                f"to step {old[0][0]} from an earlier run; set trainer.ckpt_dir (or hydra.run.dir) to a "
                "new directory, move those files away, or continue them with trainer.resume=auto")

    def _newest(self, directory: Path, *, required: bool):
        """The newest checkpoint in ``directory`` that verifies and loads safely; bad ones are
        reported in one line each and skipped for the previous one."""
        catalog.remove_stale_temps(directory)
        found = catalog.newest_loadable(directory, log.warning)
        if found is None:
            if required:
                raise CheckpointError(str(directory), "trainer.resume names this directory, but it holds "
                                      "no valid checkpoint; name another one, or trainer.resume=never")
            return None
        step, path, _ = found
        if directory == self.directory:
            # The newer files were skipped as bad; left in place they would outrank new saves
            # when old checkpoints are pruned.
            for moved in catalog.set_aside_newer(directory, step):
                log.warning("set aside %s (skipped as unusable)", moved)
        return path, read_verified(path)

    # ------------------------------------------------------------------ save
    def due(self, step: int, time_due: bool) -> bool:
        every = self.cfg.trainer.ckpt_every
        return self.directory is not None and ((every > 0 and step % every == 0) or time_due)

    def time_due(self) -> bool:
        """Rank 0's clock says the time-based interval has passed (folded into the step's
        agreement collective, so every rank saves after the same step)."""
        minutes = self.cfg.trainer.ckpt_every_min
        return (self.directory is not None and minutes > 0
                and time.monotonic() - self._last_save >= 60 * minutes)

    def save(self, step: int, rep, counters: dict[str, int]) -> Path | None:
        """A collective (RNG states are gathered); rank 0 writes, then prunes old ones."""
        if self.directory is None:
            return None
        t0 = time.perf_counter()
        state = capture(step, rep, self.ctx, self.cfg, counters)
        self._last_save = time.monotonic()
        if state is None:
            return None
        path = catalog.checkpoint_path(self.directory, step)
        data = encode(state)
        write_atomic(path, data)
        removed = catalog.prune(self.directory, self.cfg.trainer.ckpt_keep)
        log.info("checkpoint step %d -> %s (%.1f MB, %.2f s%s)", step, path, len(data) / 1e6,
                 time.perf_counter() - t0, f"; removed {len(removed)} older" if removed else "")
        return path
