"""Nodes that vanish, freeze or blink: what a 2-node ddtrain job does, measured on a cluster of
network namespaces on this machine (``ddtrain.testing.netns``; needs root).

Four cases, each on a fresh cluster of 2 nodes x 1 rank (rank 0 on node1, where mpirun runs;
rank 1 on node2), with ``comm.timeout_s`` 20 by default:

- ``vanish``: node2's cable is unplugged mid-training and never replugged. Each side sees the
  other go silent; every rank must exit non-zero within the timeout + 10 s, naming the lost rank.
- ``freeze``: every rank of node2 gets SIGSTOP. Rank 0 must exit non-zero within the timeout +
  10 s, naming rank 1.
- ``blink``: node2's cable is unplugged for 3 s, then replugged. The job must finish with exit
  0 and the very loss curve of an undisturbed run on the same cluster.
- ``sigusr1``: SIGUSR1 to mpirun. Every rank must checkpoint and exit 0, and a resume across the
  two nodes must continue the uninterrupted run's loss curve bit for bit.

    python launch/bench_cluster_faults.py                   # every case, 3 repeats, interleaved
    python launch/bench_cluster_faults.py --repeats 1 --only vanish

Each rank runs under a small wrapper (``--rank-wrapper``, this script) that records its pid, its
stderr, its exit code and the time it exited in the run directory: a rank on a node whose cable
is unplugged can no longer tell mpirun anything. Times are from the fault (the unplugging, the
SIGSTOP, the signal) to each rank's exit and to mpirun's. Prints a Markdown table with the
median and the spread (min-max) of each, the exit codes, the one-line messages, and the device,
the command and the date.
"""

import argparse
import datetime as _dt
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TINY = ["model=mlp", "model.hidden=32", "model.layers=2", "data.image_size=8", "data.samples=512",
        "data.batch_size=8", "optim=sgd", "optim.lr=0.05", "optim.schedule=constant",
        "trainer.log_every=1", "trainer.progress=false", "tensorboard=false", "seed=3"]
TIMEOUT_S = 20.0  # comm.timeout_s of every run
BLINK_S = 3.0  # how long the blink case keeps node2's cable unplugged
LOST_NODE = "node2"
CASES = ("vanish", "freeze", "blink", "sigusr1")


# ------------------------------------------------------------------ the rank wrapper
def rank_wrapper(out_dir: Path, argv: list[str]) -> int:
    """Run one rank (``argv``) and record ``rank<R>.pid``, ``rank<R>.err`` and ``rank<R>.exit``
    (``<exit code> <time.time()>``) in ``out_dir``. Open MPI signals each rank's process group,
    so the rank gets mpirun's signals (SIGUSR1, SIGTERM, SIGCONT, SIGKILL) directly; the wrapper
    ignores the stop signals rather than pass them on, which would deliver them twice (and a
    second stop signal means "exit now")."""
    rank = os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("RANK", "x"))
    with open(out_dir / f"rank{rank}.err", "w") as err:
        child = subprocess.Popen(argv, stderr=err)
    (out_dir / f"rank{rank}.pid").write_text(str(child.pid))
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)  # after the start: an ignored signal stays so across exec
    rc = child.wait()
    code = 128 - rc if rc < 0 else rc  # as a shell reports a rank killed by a signal
    (out_dir / f"rank{rank}.exit").write_text(f"{code} {time.time()!r}")
    return code


# ------------------------------------------------------------------ one job on the cluster
@dataclass
class Job:
    cluster: object  # netns.Cluster
    run_dir: Path
    proc: subprocess.Popen
    files: Path  # the rank wrappers' files
    ranks: int = 2

    def pids(self, wait_s: float = 30.0) -> dict[int, int]:
        """rank -> pid of each rank's ddtrain process, as its wrapper recorded it."""
        deadline = time.monotonic() + wait_s
        while True:
            files = {r: self.files / f"rank{r}.pid" for r in range(self.ranks)}
            if all(f.exists() and f.read_text() for f in files.values()):
                return {r: int(f.read_text()) for r, f in files.items()}
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the ranks did not start: {self.stderr_tail()}")
            time.sleep(0.05)

    def exits(self) -> dict[int, tuple[int, float]]:
        """rank -> (exit code, time.time() of the exit) of each rank that has exited."""
        found = {}
        for r in range(self.ranks):
            path = self.files / f"rank{r}.exit"
            if path.exists() and path.read_text().strip():
                code, when = path.read_text().split()
                found[r] = (int(code), float(when))
        return found

    def rank_stderr(self, rank: int) -> str:
        path = self.files / f"rank{rank}.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def stderr_tail(self) -> str:
        """The end of mpirun's stderr. A file, not a pipe: a daemon on an unreachable node holds
        the pipe open long after mpirun itself has exited."""
        path = self.files / "mpirun.err"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def kill(self) -> None:
        """Leave nothing behind: mpirun, and every rank wherever it runs (a frozen one too)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for r in range(self.ranks):
            path = self.files / f"rank{r}.pid"
            try:
                pid = int(path.read_text())
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass  # never started, or already gone


# Open MPI 5's daemon now and then fails to start inside a fresh namespace, before any rank runs;
# nothing of the job has happened then, so it is started once more.
START_FAILURE = "PMIx server's listener thread failed to start"


def start(cluster, run_dir: Path, overrides: list[str], env: dict[str, str] | None = None,
          files: Path | None = None) -> Job:
    """``ddtrain-launch -n 2 --hostfile H`` on node1, each rank under ``rank_wrapper``, whose
    files go to ``files`` (default: the run directory). Returns once every rank has started."""
    job = _launch(cluster, run_dir, overrides, env, files)
    try:
        job.pids(wait_s=60)
    except RuntimeError:
        job.kill()
        if START_FAILURE not in job.stderr_tail():
            raise
        job = _launch(cluster, run_dir, overrides, env, files)
        job.pids(wait_s=60)  # a second failure raises, with mpirun's stderr
    return job


def _launch(cluster, run_dir: Path, overrides: list[str], env: dict[str, str] | None,
            files: Path | None) -> Job:
    from ddtrain.launcher.mpirun import console_script
    from ddtrain.testing import netns

    files = files or run_dir
    files.mkdir(parents=True, exist_ok=True)
    program = (f"{sys.executable} {Path(__file__).resolve()} --rank-wrapper {files} "
               f"{console_script('ddtrain')}")
    argv = [console_script("ddtrain-launch"), "-n", "2", "--hostfile", str(cluster.hostfile),
            "--program", program, *overrides, f"hydra.run.dir={run_dir}"]
    # This process is ddtrain-launch (through the node's exec chain), mpirun's parent: signals
    # sent to it reach mpirun once, and its exit is mpirun's (or 3 when it had to stop mpirun).
    with open(files / "mpirun.err", "w") as err:
        proc = subprocess.Popen(netns.exec_argv(cluster, "node1", argv), env=netns.node_env(cluster, env),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    return Job(cluster, run_dir, proc, files)


def wait_for_step(job: Job, step: int, timeout_s: float = 120) -> int:
    """Block until the run logs ``step`` or later; return the step logged."""
    deadline = time.monotonic() + timeout_s
    path = job.run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if path.exists():
            lines = path.read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= step:
                return json.loads(lines[-1])["step"]
        if job.proc.poll() is not None:
            raise RuntimeError(f"the job ended early (rc {job.proc.returncode}): {job.stderr_tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"step {step} not reached in {timeout_s} s")


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def last_step(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1])["step"] if lines else 0


def error_line(text: str) -> str:
    """A rank's one-line verdict: its last ``ddtrain:`` line ("" when it printed none: a run
    that ended normally)."""
    mine = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("ddtrain:")]
    return mine[-1] if mine else ""


# ------------------------------------------------------------------ what a case measured
@dataclass
class Outcome:
    case: str
    rank_exit_s: dict[int, float | None] = field(default_factory=dict)  # None: did not exit
    rank_codes: dict[int, int | None] = field(default_factory=dict)
    rank_lines: dict[int, str] = field(default_factory=dict)
    mpirun_exit_s: float | None = None  # None: still running when given up on
    mpirun_code: int | None = None
    mpirun_waited_s: float = 0.0
    mpirun_tail: str = ""
    detail: str = ""  # what the case checked beyond the exits (losses, checkpoints)
    ok: bool = True  # what ``detail`` describes held


def _settle(job: Job, t0: float, ranks: list[int], rank_wait_s: float, mpirun_wait_s: float,
            case: str) -> Outcome:
    """Wait for ``ranks`` to exit (up to ``rank_wait_s`` after ``t0``), then for mpirun (up to
    ``mpirun_wait_s`` after the last of them), and record what happened; kill what is left."""
    out = Outcome(case)
    deadline = t0 + rank_wait_s
    while time.time() < deadline and not set(ranks) <= set(job.exits()):
        time.sleep(0.05)
    ended = job.exits()
    after = max([when for _, when in ended.values()] + [time.time()])
    mpirun_deadline = max(after, time.time()) + mpirun_wait_s
    while time.time() < mpirun_deadline and job.proc.poll() is None:
        time.sleep(0.05)
    if job.proc.poll() is not None:
        out.mpirun_exit_s, out.mpirun_code = time.time() - t0, job.proc.returncode
        out.mpirun_tail = job.stderr_tail()
    out.mpirun_waited_s = time.time() - t0
    ended = job.exits()
    for r in range(job.ranks):
        code, when = ended.get(r, (None, None))
        out.rank_codes[r] = code
        out.rank_exit_s[r] = None if when is None else when - t0
        out.rank_lines[r] = error_line(job.rank_stderr(r))
    return out


def vanish(cluster, run_dir: Path, timeout_s: float = TIMEOUT_S, mpirun_wait_s: float = 60.0,
           env: dict[str, str] | None = None) -> Outcome:
    """Unplug node2 mid-training for good; both ranks must stop by themselves."""
    from ddtrain.testing import netns

    job = start(cluster, run_dir, [*TINY, "trainer.steps=100000000", f"comm.timeout_s={timeout_s:g}"], env)
    try:
        wait_for_step(job, 5)
        t0 = time.time()
        netns.set_link(cluster, LOST_NODE, "down")
        return _settle(job, t0, [0, 1], timeout_s + 10, mpirun_wait_s, "vanish")
    finally:
        job.kill()


def freeze(cluster, run_dir: Path, timeout_s: float = TIMEOUT_S, mpirun_wait_s: float = 60.0,
           env: dict[str, str] | None = None) -> Outcome:
    """SIGSTOP every rank of node2; rank 0 must stop by itself."""
    from ddtrain.testing import netns

    job = start(cluster, run_dir, [*TINY, "trainer.steps=100000000", f"comm.timeout_s={timeout_s:g}"], env)
    try:
        wait_for_step(job, 5)
        on_node = set(netns.node_pids(cluster, LOST_NODE))
        frozen = {r: pid for r, pid in job.pids().items() if pid in on_node}
        if not frozen:
            raise RuntimeError(f"no rank runs on {LOST_NODE}")
        t0 = time.time()
        for pid in frozen.values():
            os.kill(pid, signal.SIGSTOP)
        survivors = [r for r in range(job.ranks) if r not in frozen]
        out = _settle(job, t0, survivors, timeout_s + 10, mpirun_wait_s, "freeze")
        out.detail = f"frozen: rank(s) {sorted(frozen)}"
        return out
    finally:
        job.kill()


def blink(cluster, run_dir: Path, timeout_s: float = TIMEOUT_S, steps: int = 150,
          blink_s: float = BLINK_S, reference: Path | None = None) -> Outcome:
    """Unplug node2 for ``blink_s`` mid-training; the job must end as an undisturbed one.
    ``reference``: the run directory of an undisturbed run of the same config (run here if None)."""
    from ddtrain.testing import netns

    overrides = [*TINY, f"trainer.steps={steps}", f"comm.timeout_s={timeout_s:g}"]
    if reference is None:
        reference = run_dir.with_name(run_dir.name + "-reference")
        ref = start(cluster, reference, overrides)
        try:
            ref.proc.wait(timeout=180)
        finally:
            ref.kill()
        if ref.proc.returncode != 0:
            raise RuntimeError(f"blink: the undisturbed run failed (rc {ref.proc.returncode}): "
                               f"{ref.stderr_tail()}")
    job = start(cluster, run_dir, overrides)
    try:
        down_at = wait_for_step(job, 5)
        t0 = time.time()
        netns.set_link(cluster, LOST_NODE, "down")
        time.sleep(blink_s)
        netns.set_link(cluster, LOST_NODE, "up")
        up_at = last_step(run_dir)
        out = _settle(job, t0, [0, 1], 180, 30, "blink")
    finally:
        job.kill()
    got, want = losses(run_dir), losses(reference)
    same = got == want
    records = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out.detail = (f"link down at step {down_at}, up at step {up_at} of {steps}; longest step "
                  f"{max(r['step_time_s'] for r in records):.2f} s; "
                  f"final loss {got[-1] if got else None!r} vs undisturbed {want[-1]!r}: "
                  f"{'identical' if same else 'DIFFERENT'} curve")
    out.ok = same and up_at < steps and len(got) == steps
    return out


def sigusr1(cluster, run_dir: Path, timeout_s: float = TIMEOUT_S, extra_steps: int = 4) -> Outcome:
    """SIGUSR1 to mpirun mid-training: every rank checkpoints and exits 0; a resume to
    k + ``extra_steps`` must log the losses of an uninterrupted run of that many steps (a
    constant LR, so trainer.steps only bounds the run)."""
    from ddtrain.ckpt import catalog

    overrides = [*TINY, f"comm.timeout_s={timeout_s:g}"]
    job = start(cluster, run_dir, [*overrides, "trainer.steps=100000000", "trainer.ckpt_every=0"])
    try:
        wait_for_step(job, 4)
        t0 = time.time()
        job.proc.send_signal(signal.SIGUSR1)
        out = _settle(job, t0, [0, 1], 120, 30, "sigusr1")
    finally:
        job.kill()
    k = last_step(run_dir)
    saved = [s for s, _ in catalog.list_checkpoints(run_dir / "checkpoints")]
    total = k + extra_steps
    resumed = start(cluster, run_dir, [*overrides, f"trainer.steps={total}"],
                    files=run_dir.with_name(run_dir.name + "-resume-ranks"))
    ref_dir = run_dir.with_name(run_dir.name + "-reference")
    try:
        resumed.proc.wait(timeout=180)
    finally:
        resumed.kill()
    ref = start(cluster, ref_dir, [*overrides, f"trainer.steps={total}"])
    try:
        ref.proc.wait(timeout=180)
    finally:
        ref.kill()
    ok = resumed.proc.returncode == 0 and ref.proc.returncode == 0
    same = ok and losses(run_dir) == losses(ref_dir)
    resumed_line = next((ln for ln in resumed.rank_stderr(0).splitlines() if "resumed from" in ln), "")
    out.detail = (f"stopped after step {k}, checkpoints {saved}; resume to step {total}: rc "
                  f"{resumed.proc.returncode}, {'identical' if same else 'DIFFERENT'} curve vs uninterrupted")
    out.ok = same and saved[:1] == [k] and bool(resumed_line)
    if not ok:
        out.detail += f"; stderr: {(resumed.stderr_tail() or ref.stderr_tail())[-1000:]}"
    return out


# ------------------------------------------------------------------ the table
def _spread(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    missing = len(values) - len(got)
    if not got:
        return f"did not exit ({missing}/{len(values)})"
    text = f"{statistics.median(got):.1f} ({min(got):.1f}-{max(got):.1f})"
    return text + (f"; did not exit in {missing}/{len(values)}" if missing else "")


def _short(line: str, limit: int = 150) -> str:
    line = line.replace("|", "/")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def table(outcomes: list[Outcome]) -> str:
    rows = ["| case | runs | rank 0 exit (s) | rank 1 exit (s) | rank exit codes | mpirun exit (s) "
            "| mpirun code | messages (one per distinct line) | checked |",
            "|---|---|---|---|---|---|---|---|---|"]
    for case in CASES:
        mine = [o for o in outcomes if o.case == case]
        if not mine:
            continue
        codes = sorted({"/".join(str(o.rank_codes[r]) for r in sorted(o.rank_codes)) for o in mine})
        mpirun = [o.mpirun_exit_s for o in mine]
        hung = [o.mpirun_waited_s for o in mine if o.mpirun_exit_s is None]
        mpirun_text = _spread(mpirun) if not hung else (
            _spread(mpirun) if len(hung) < len(mine) else f"still running after {min(hung):.0f} s (killed)")
        lines = sorted({f"rank {r}: {_short(o.rank_lines[r])}" for o in mine for r in o.rank_lines
                        if o.rank_lines[r]})
        details = "; ".join(sorted({o.detail for o in mine if o.detail})) or "-"
        ok = "yes" if all(o.ok for o in mine) else "NO"
        rows.append(f"| {case} | {len(mine)} | {_spread([o.rank_exit_s[0] for o in mine])} | "
                    f"{_spread([o.rank_exit_s[1] for o in mine])} | {', '.join(codes)} | {mpirun_text} | "
                    f"{', '.join(sorted({str(o.mpirun_code) for o in mine}))} | {'<br>'.join(lines)} | "
                    f"{ok}: {_short(details, 400)} |")
    return "\n".join(rows)


def run_case(case: str, tmp: Path, index: int, timeout_s: float, mpirun_wait_s: float) -> Outcome:
    """One case on a fresh 2-node cluster (removed afterwards)."""
    from ddtrain.testing import netns

    cluster = netns.Cluster(f"ddtbcf{os.getpid() % 100000}", 2, "none", netns.DEFAULT_SUBNET, 1)
    netns.up(cluster)
    run_dir = tmp / f"{case}-{index}" / "run"
    try:
        if case == "vanish":
            return vanish(cluster, run_dir, timeout_s, mpirun_wait_s)
        if case == "freeze":
            return freeze(cluster, run_dir, timeout_s, mpirun_wait_s)
        if case == "blink":
            return blink(cluster, run_dir, timeout_s)
        return sigusr1(cluster, run_dir, timeout_s)
    finally:
        netns.down(cluster.name)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--rank-wrapper"]:
        sys.exit(rank_wrapper(Path(argv[1]), argv[2:]))
    from ddtrain.launcher.cores import usable_cpus
    from ddtrain.testing import netns
    from ddtrain.testing.lock import held

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--timeout-s", type=float, default=TIMEOUT_S, help="comm.timeout_s of the runs")
    ap.add_argument("--mpirun-wait-s", type=float, default=60.0,
                    help="how long after the ranks' exits to wait for mpirun before killing it")
    ap.add_argument("--only", choices=CASES, action="append", help="run only these cases")
    ap.add_argument("--lock", help="hold this flock(1) lock file during each case")
    args = ap.parse_args(argv)
    try:
        netns.check_host()
    except netns.ClusterError as e:
        sys.exit(f"bench_cluster_faults: {e}")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="bench_cluster_faults-") as tmp:
        for i in range(args.repeats):  # interleaved: a slow spell of the machine hits every case
            for case in args.only or CASES:
                with held(args.lock):
                    out = run_case(case, Path(tmp), i, args.timeout_s, args.mpirun_wait_s)
                outcomes.append(out)
                print(f"{case} #{i + 1}: ranks exit {out.rank_exit_s} codes {out.rank_codes}; mpirun "
                      f"{out.mpirun_exit_s} code {out.mpirun_code}; {out.detail}", file=sys.stderr,
                      flush=True)
    print(f"date: {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; device: CPU VM, "
          f"{usable_cpus()} cores; "
          f"cluster: 2 network-namespace nodes x 1 rank (rank 1 on node2), links unshaped; "
          f"comm.timeout_s={args.timeout_s:g}; repeats: {args.repeats}; command: "
          f"`python launch/bench_cluster_faults.py {' '.join(argv)}`")
    print("\nTimes are seconds from the fault (unplugging, SIGSTOP, SIGUSR1) to the exit: median "
          "(min-max). Exit codes: rank 0/rank 1; None: the rank did not exit (a frozen rank).\n")
    print(table(outcomes))


if __name__ == "__main__":
    main()
