"""``ddtrain-launch -n N [--hostfile F] -- overrides...``: run ``ddtrain`` on N ranks via mpirun.

It finds mpirun, asks it which MPI it is (``mpirun --version``), builds the command for that
flavour (``flavour.build_command``, pure and tested to the argv), prints it, and then *becomes*
mpirun (``exec``). Exec rather than a child process: Ctrl-C, a scheduler's SIGTERM and the
SIGUSR1 checkpoint request reach mpirun directly, which forwards them to the ranks as its own
documentation describes, and mpirun's exit code is the launcher's, with nothing in between to
get either wrong.

One rank also goes through mpirun (``-n 1``), so that a 1-rank run is started, configured and
logged exactly as an N-rank one; run ``ddtrain`` directly for a plain single process.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ddtrain.errors import EXIT_BAD_INPUT
from ddtrain.launcher.cores import machine_slots
from ddtrain.launcher.flavour import FLAVOURS, LaunchError, build_command, detect_flavour
from ddtrain.launcher.mpirun import (
    LauncherNotFound,
    child_env,
    console_script,
    find_mpirun,
    running_as_root,
)

PROG = "ddtrain-launch"
_VERSION_TIMEOUT_S = 60


class _Refused(Exception):
    """A launch refused before anything ran; the message is one line with the fix."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit 2, like every other refusal here
        raise _Refused(f"{message}; see {PROG} --help")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Run ddtrain (or --program) on N ranks through mpirun, with the flags this "
                    "machine's MPI needs (Open MPI, MPICH or Intel MPI, detected).",
        epilog="Example: ddtrain-launch -n 8 --hostfile hosts -- model=gpt trainer.steps=1000",
    )
    p.add_argument("-n", "--np", dest="n", type=int, required=True, help="number of ranks (one per GPU)")
    p.add_argument("--hostfile", help="hosts to run on; Open MPI: 'node01 slots=8' lines, "
                                      "MPICH / Intel MPI: 'node01:8' lines")
    p.add_argument("--mpi", choices=("auto", *FLAVOURS), default="auto",
                   help="MPI flavour; auto asks 'mpirun --version' (default: auto)")
    p.add_argument("--mpirun", help="the launcher to use (default: mpirun next to this Python, "
                                    "else on PATH)")
    p.add_argument("--program", default="ddtrain",
                   help="command each rank runs, overrides appended (default: ddtrain); "
                        "e.g. --program 'python -m ddtrain.perf.allreduce'")
    p.add_argument("--mpi-args", default="",
                   help="extra launcher flags, one quoted string with '=': "
                        "--mpi-args='--mca btl_tcp_if_include eth0'")
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


def resolve_program(command: str) -> list[str]:
    """``--program`` as argv. ``python`` is this interpreter and a bare name prefers the console
    script next to it, both as absolute paths, so remote ranks start the same ones (on a shared
    file system) whatever their PATH says."""
    argv = shlex.split(command)
    if not argv:
        raise _Refused("--program is empty; fix: --program ddtrain")
    head = argv[0]
    if head in ("python", "python3"):
        head = sys.executable  # the interpreter ddtrain is installed in
    elif os.sep not in head and Path(console_script(head)).is_file():
        head = console_script(head)
    return [head, *argv[1:]]


def _locate_mpirun(explicit: str | None, flavour: str, dry_run: bool) -> str:
    if explicit:
        found = shutil.which(explicit)
        if found is None:
            raise _Refused(f"--mpirun {explicit!r} is not an executable; fix: give the path of "
                           "your MPI's mpirun, or leave --mpirun out")
        return found
    try:
        return find_mpirun()
    except LauncherNotFound as e:
        if dry_run and flavour != "auto":
            return "mpirun"  # printing a command needs no MPI when the flavour is given
        raise _Refused(str(e)) from None


def _ask_flavour(mpirun: str) -> str:
    try:
        proc = subprocess.run([mpirun, "--version"], capture_output=True, text=True,
                              timeout=_VERSION_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _Refused(f"could not run '{mpirun} --version' ({type(e).__name__}: {e}); "
                       f"fix: name the flavour with --mpi={'|'.join(FLAVOURS)}") from None
    text = proc.stdout + proc.stderr
    flavour = detect_flavour(text)
    if flavour is None:
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        raise _Refused(f"cannot tell which MPI {mpirun} is from its --version output {first!r}; "
                       f"fix: name it with --mpi={'|'.join(FLAVOURS)}")
    return flavour


@dataclass(frozen=True)
class Plan:
    command: list[str]  # the full mpirun argv
    env: dict[str, str]  # the environment mpirun runs with
    dry_run: bool


def plan(argv: Sequence[str], environ: dict[str, str]) -> Plan:
    """Parse ``argv`` and decide the mpirun command and the environment to run it with."""
    head, tail = split_args(argv)
    args = _parser().parse_args(head)
    if args.n < 1:
        raise _Refused(f"-n {args.n}: the number of ranks must be >= 1; fix: e.g. -n 2")
    if args.hostfile and not Path(args.hostfile).is_file():
        raise _Refused(f"--hostfile {args.hostfile!r} is not a file; fix: give an existing hostfile "
                       "(see launch/hostfile.example), or leave it out to run on this machine")
    mpirun = _locate_mpirun(args.mpirun, args.mpi, args.dry_run)
    flavour = _ask_flavour(mpirun) if args.mpi == "auto" else args.mpi
    is_root = running_as_root()
    env = child_env(environ, is_root=is_root)
    # Only Open MPI without a hostfile limits ranks to this machine's cores.
    slots = machine_slots() if flavour == "openmpi" and not args.hostfile else None
    try:
        extra = shlex.split(args.mpi_args)
    except ValueError as e:
        raise _Refused(f"--mpi-args {args.mpi_args!r} does not parse ({e}); fix: quote it once") from None
    program = [*resolve_program(args.program), *args.overrides, *tail]
    command = build_command(flavour, args.n, program, hostfile=args.hostfile, environ=env,
                            is_root=is_root, slots=slots, mpirun=mpirun, extra=extra)
    return Plan(command, env, args.dry_run)


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
    try:
        _exec(p.command, p.env)
    except OSError as e:
        print(f"{PROG}: error: could not start {p.command[0]} ({e}); fix: check --mpirun",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0  # not reached: exec replaced this process


if __name__ == "__main__":
    sys.exit(main())
