"""``ddtrain-launch -n N [--hostfile F] -- overrides...``: run ``ddtrain`` on N ranks via mpirun
(or, with ``--launcher srun``, as a job step of a Slurm allocation).

It finds mpirun, asks it which MPI it is (``mpirun --version``), builds the command for that
flavour (``policy.launch_command``, pure and tested to the argv), prints it, and runs it as its
child (``supervise.py``): Ctrl-C, a scheduler's SIGTERM and the SIGUSR1 checkpoint request are
passed on to mpirun once, which forwards them to the ranks, and mpirun's exit code is the
launcher's. The one thing the parent adds: when a rank of this node has failed and mpirun has
not ended the job ``--fault-grace-s`` later (it waits on a node it cannot reach), it stops
mpirun. With ``--fault-grace-s 0``, and always under srun (Slurm ends a step that lost a node
itself), ddtrain-launch *becomes* the launcher (``exec``) instead, with nothing in between.

One rank also goes through mpirun (``-n 1``), so that a 1-rank run is started, configured and
logged exactly as an N-rank one; run ``ddtrain`` directly for a plain single process.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ddtrain.errors import EXIT_BAD_INPUT
from ddtrain.launcher.flavour import FLAVOURS, LaunchError
from ddtrain.launcher.mpirun import console_script
from ddtrain.launcher.policy import LAUNCHERS, resolve_target
from ddtrain.launcher.supervise import DEFAULT_GRACE_S, FAULT_DIR_VAR, supervise

PROG = "ddtrain-launch"


class _Refused(Exception):
    """A launch refused before anything ran; the message is one line with the fix."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other refusal here
        raise _Refused(f"{message}; see {PROG} --help")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Run ddtrain (or --program) on N ranks through mpirun, with the flags this "
                    "machine's MPI needs (Open MPI, MPICH or Intel MPI, detected), or through "
                    "srun inside a Slurm allocation.",
        epilog="Examples: ddtrain-launch -n 8 --hostfile hosts -- model=gpt trainer.steps=1000; "
               "in an sbatch script: ddtrain-launch --launcher srun -- model=gpt",
    )
    p.add_argument("-n", "--np", dest="n", type=int,
                   help="number of ranks (one per GPU); with --launcher srun, default: every task "
                        "of the allocation")
    p.add_argument("--launcher", choices=LAUNCHERS, default="mpirun",
                   help="mpirun, or srun inside a Slurm allocation (default: mpirun)")
    p.add_argument("--hostfile", help="hosts to run on; Open MPI: 'node01 slots=8' lines, "
                                      "MPICH / Intel MPI: 'node01:8' lines")
    p.add_argument("--mpi", choices=("auto", *FLAVOURS), default="auto",
                   help="MPI flavour; auto asks 'mpirun --version' (default: auto)")
    p.add_argument("--mpirun", help="the launcher to use (default: mpirun next to this Python, "
                                    "else on PATH)")
    p.add_argument("--program", default="ddtrain",
                   help="command each rank runs, overrides appended (default: ddtrain); "
                        "e.g. --program 'python -m ddtrain.perf.allreduce'")
    p.add_argument("--mpi-args", "--launcher-args", dest="mpi_args", default="",
                   help="extra launcher flags (mpirun's or srun's), one quoted string with '=': "
                        "--mpi-args='--mca btl_tcp_if_include eth0'")
    p.add_argument("--fault-grace-s", type=float, default=DEFAULT_GRACE_S,
                   help="after a rank on this node fails, how long mpirun may take to end the job "
                        "before it is stopped (it waits for a node it cannot reach until TCP gives "
                        f"up); 0: exec mpirun and never stop it (default: {DEFAULT_GRACE_S:g})")
    p.add_argument("--dry-run", action="store_true", help="print the command (one line) and exit")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for ddtrain (or put them after --)")
    return p


def split_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(launcher options, program arguments): everything after the first ``--`` goes to the
    program untouched, even when it starts with a dash."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def resolve_program(command: str, launcher: str = "mpirun") -> list[str]:
    """``--program`` as argv. Under mpirun, ``python`` is this interpreter and a bare name
    prefers the console script next to it, both as absolute paths, so remote ranks start the
    same ones (on a shared file system) whatever their PATH says. Under srun it stays as given:
    srun gives every task the caller's environment, PATH included, so a bare name finds the
    same program on every node, or a container's own inside one."""
    argv = shlex.split(command)
    if not argv:
        raise _Refused("--program is empty; fix: --program ddtrain")
    if launcher == "srun":
        return argv
    head = argv[0]
    if head in ("python", "python3"):
        head = sys.executable  # the interpreter ddtrain is installed in
    elif os.sep not in head and Path(console_script(head)).is_file():
        head = console_script(head)
    return [head, *argv[1:]]


@dataclass(frozen=True)
class Plan:
    command: list[str]  # the launcher's full argv
    env: dict[str, str]  # the environment the launcher runs with
    dry_run: bool
    grace_s: float = 0.0  # > 0: run the launcher as a child and watch it (supervise.py)


def plan(argv: Sequence[str], environ: dict[str, str]) -> Plan:
    """Parse ``argv`` and decide the launcher command and the environment to run it with."""
    head, tail = split_args(argv)
    args = _parser().parse_args(head)
    _check(args)
    try:
        extra = shlex.split(args.mpi_args)
    except ValueError as e:
        raise _Refused(f"--mpi-args {args.mpi_args!r} does not parse ({e}); fix: quote it once") from None
    target = resolve_target(args.launcher, environ=environ, mpi=args.mpi, mpirun=args.mpirun,
                            hostfile=args.hostfile, extra=extra, dry_run=args.dry_run)
    program = [*resolve_program(args.program, args.launcher), *args.overrides, *tail]
    command = target.command(args.n, program)
    return Plan(command, target.env, args.dry_run, args.fault_grace_s if args.launcher == "mpirun" else 0.0)


def _check(args: argparse.Namespace) -> None:
    """Refuse what no launcher would accept, before looking at the machine."""
    if args.n is None and args.launcher == "mpirun":
        raise _Refused("the following arguments are required with mpirun: -n/--np; fix: e.g. -n 2")
    if args.n is not None and args.n < 1:
        raise _Refused(f"-n {args.n}: the number of ranks must be >= 1; fix: e.g. -n 2")
    if not args.fault_grace_s >= 0:
        raise _Refused(f"--fault-grace-s {args.fault_grace_s:g}: must be >= 0; fix: e.g. --fault-grace-s 10 "
                       "(0: never stop mpirun)")
    if args.launcher == "srun":
        for flag, given in (("--mpirun", args.mpirun), ("--mpi", args.mpi != "auto")):
            if given:
                raise _Refused(f"{flag} is for mpirun, not srun; fix: leave {flag} out")
    elif args.hostfile and not Path(args.hostfile).is_file():
        raise _Refused(f"--hostfile {args.hostfile!r} is not a file; fix: give an existing hostfile "
                       "(see launch/hostfile.example), or leave it out to run on this machine")


def _exec(command: list[str], env: dict[str, str]) -> None:
    os.execvpe(command[0], command, env)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        p = plan(argv, dict(os.environ))
    except (_Refused, LaunchError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    line = shlex.join(p.command)
    if p.dry_run:
        print(line)
        return 0
    print(f"{PROG}: {line}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    fault_dir = Path(tempfile.mkdtemp(prefix="ddtrain-launch-")) if p.grace_s > 0 else None
    try:
        if fault_dir is None:
            _exec(p.command, p.env)
            return 0  # not reached: exec replaced this process
        # In mpirun's own environment only, not forwarded: the ranks of this node inherit it, and
        # only they can write to this node's directory.
        env = {**p.env, FAULT_DIR_VAR: str(fault_dir)}
        return supervise(p.command, env, fault_dir, p.grace_s, prog=PROG)
    except OSError as e:
        fix = "load Slurm, or run inside an allocation" if p.command[0] == "srun" else "check --mpirun"
        print(f"{PROG}: error: could not start {p.command[0]} ({e}); fix: {fix}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if fault_dir is not None:
            shutil.rmtree(fault_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
