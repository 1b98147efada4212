"""The docs' commands match the real command-line interfaces.

Every line of a ```bash block in README.md, CONTRIBUTING.md and docs/*.md is checked in this
process; nothing is launched and no GPU is needed:

- ``ddtrain`` (also behind mpirun, srun, a container, or ``torchrun -m ddtrain.cli``): the
  overrides compose and validate as ``ddtrain.cli.preflight`` does before a job starts, and the
  model can read the chosen data set;
- ``ddtrain-scale``: the same against the ``scale`` config and the study's own checks;
- ``ddtrain-launch``: ``--dry-run`` (with ``--mpi openmpi`` unless the line names a flavour or
  srun) exits 0, and its program's arguments are checked as that program's;
- ``python launch/X.py``, ``python -m module``: the flags parse with that program's own argparse
  parser, and the Hydra overrides it passes on compose;
- ``bash launch/X.sh``, ``sbatch launch/X.sbatch``: the script exists, its overrides compose;
- ``pytest`` and ``bash tests/run.sh``: the paths exist and ``-m`` names registered markers;
- ``docker build -f FILE``: the Dockerfile exists.

Inline code in the prose is checked too: every `section.key` must be a key of that section's
schema, every `group=option` a file in configs/<group>/. A line none of this recognises must
start with a command of ``UNCHECKED``, which says why it has nothing to check.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import io
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from unittest import mock

import pytest

from ddtrain import config as schema
from ddtrain.cli import preflight
from ddtrain.config import from_mapping
from ddtrain.launcher import cli as launch_cli
from ddtrain.metrics import TAGS
from ddtrain.registry import datasets, input_kind, models
from ddtrain.scaling.config import ScaleConfig, parse_study
from ddtrain.scaling.model import Cluster

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]

# Commands the docs show that hold nothing of ddtrain's to check, each with the reason.
UNCHECKED = {
    "source": "activates the venv: a shell built-in",
    "export": "sets variables; the commands that read them are checked on their own lines",
    "grep": "reads the source tree (CONTRIBUTING.md's import check)",
    "tensorboard": "a viewer that takes no ddtrain options",
    "pip": "installs packages; its options are pip's own",
}
# Files the docs name as the reader's own: the checks run in a directory holding a copy of the
# template, since ddtrain-launch refuses a hostfile that does not exist.
READER_FILES = {"hosts": REPO / "launch" / "hostfile.example"}
# Programs in launch/ whose Hydra overrides go to ddtrain-scale; the others' go to ddtrain.
SCALE_SCRIPTS = {"bench_scaling_model.py", "scaling_sweep.sh"}
# `model.pt` and the like are file names, not keys.
FILE_SUFFIXES = {"pt", "py", "yaml", "json", "jsonl", "csv", "png", "log", "md"}
MARKERS: frozenset[str] = frozenset()  # pytest's registered markers, set by the fixture below


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    words: tuple[str, ...]


def _uncomment(line: str) -> str:
    """``line`` without its shell comment: a ``#`` outside quotes that starts a word."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def bash_commands(text: str, name: str) -> list[Command]:
    """One Command per line of each ```bash block, continuation lines joined."""
    commands, lang, pending, start = [], None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.fullmatch(r"```(\w*)", line.strip())
        if fence:
            lang = fence.group(1) if lang is None else None
            continue
        if lang != "bash":
            continue
        start = start if pending else number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words = shlex.split(_uncomment(pending + line))
        pending = ""
        if words:
            commands.append(Command(f"{name}:{start}", tuple(words)))
    return commands


# ----------------------------------------------------------------------------- Hydra overrides
def _kinds_match(cfg) -> None:
    input_kind(cfg.model.name, cfg.data.name)  # the run's own model/data check, no data built


VALIDATE = {
    "train": lambda raw: _kinds_match(from_mapping(raw)),
    "scale": lambda raw: _kinds_match(parse_study(raw)[0]),
}


def compose(overrides, config_name: str = "train") -> list[str]:
    """preflight's verdict on ``overrides``: [] or its one-line error."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            preflight(list(overrides), config_name=config_name, validate=VALIDATE[config_name])
    except SystemExit as e:
        return [f"{shlex.join(overrides)} ({config_name} config): exit {e.code}: {said.getvalue().strip()}"]
    return []


# ----------------------------------------------------------------------------- argparse programs
_PARSE_ARGS = argparse.ArgumentParser.parse_args


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser):
        super().__init__()
        self.parser = parser


def _grab(parser, args=None, namespace=None):
    raise _Parsed(parser)


@cache
def _parser_of(module) -> argparse.ArgumentParser:
    """The parser ``module.main`` builds, caught as it starts parsing (nothing else runs)."""
    with mock.patch.object(argparse.ArgumentParser, "parse_args", _grab), \
            mock.patch.object(sys, "argv", [module.__name__]):
        try:
            module.main([]) if inspect.signature(module.main).parameters else module.main()
        except _Parsed as e:
            return e.parser
    raise AssertionError(f"{module.__name__}.main() returned without parsing its arguments")


@cache
def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(f"doc_script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_flags(label: str, module, args, config_name: str = "train") -> list[str]:
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            namespace = _PARSE_ARGS(_parser_of(module), list(args))
    except SystemExit:
        return [f"{label} {shlex.join(args)}: {said.getvalue().strip().splitlines()[-1]}"]
    overrides = [w for key in ("overrides", "extra") for w in getattr(namespace, key, None) or []]
    return compose(overrides, config_name) if overrides else []


# ----------------------------------------------------------------------------- one command line
def _option(words, flag: str) -> str | None:
    for i, word in enumerate(words):
        if word == flag and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


def _split_at_colon(words):
    """An MPMD line (``mpirun -np 1 A : -np 1 B``): this program's words, and the rest."""
    return (words[:words.index(":")], words[words.index(":") + 1:]) if ":" in words else (words, [])


def check_launch(args) -> list[str]:
    head, tail = launch_cli.split_args(args)
    extra = ["--dry-run"]
    if _option(head, "--mpi") is None and _option(head, "--launcher") != "srun":
        extra += ["--mpi", "openmpi"]  # no `mpirun --version` asked: the flavour is given
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        code = launch_cli.main([*head, *extra, "--", *tail])
    problems = [f"ddtrain-launch {shlex.join(args)}: exit {code}: {said.getvalue().strip()}"] if code else []
    program = _option(head, "--program")
    return problems + (compose(tail) if program is None else check([*shlex.split(program), *tail]))


def check_script(path: str, args) -> list[str]:
    file = REPO / path
    if not file.is_file():
        return [f"{path} does not exist"]
    config_name = "scale" if file.name in SCALE_SCRIPTS else "train"
    if file.suffix == ".py":
        return parse_flags(path, _load_script(file), args, config_name)
    return compose(args, config_name)  # the shell scripts pass their arguments on as overrides


def check_pytest(args) -> list[str]:
    problems, args = [], list(args)
    while args:
        arg = args.pop(0)
        if arg == "-k" and args:
            args.pop(0)
        elif arg == "-m" and args:
            unknown = set(re.findall(r"\w+", args.pop(0))) - {"and", "or", "not"} - MARKERS
            problems += [f"pytest -m: {marker!r} is not a registered marker" for marker in sorted(unknown)]
        elif not arg.startswith("-") and not (REPO / arg.split("::")[0]).exists():
            problems.append(f"pytest: no such path {arg}")
    return problems


def check_module(name: str, args) -> list[str]:
    if name == "ddtrain.cli":
        return compose(args)
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        return [f"python -m {name}: {e}"]
    return parse_flags(f"python -m {name}", module, args)


CHECKS = {
    "ddtrain": compose,
    "ddtrain-scale": lambda args: compose(args, "scale"),
    "ddtrain-launch": check_launch,
}


def check(words) -> list[str]:
    """What is wrong with one command line: [] when it matches the real options."""
    words = list(words)
    while words and re.match(r"[A-Za-z_]\w*=", words[0]):  # VAR=value in front of a command
        words.pop(0)
    for i, word in enumerate(words):
        rest = words[i + 1:]
        if Path(word).name in CHECKS:
            mine, after = _split_at_colon(rest)
            return CHECKS[Path(word).name](mine) + (check(after) if after else [])
        if word == "-m" and rest:
            mine, after = _split_at_colon(rest[1:])
            return check_module(rest[0], mine) + (check(after) if after else [])
        if word == "-c" and i > 0 and Path(words[i - 1]).name in ("bash", "sh") and rest:
            return check(shlex.split(rest[0]))
        if word.startswith("launch/"):
            return check_script(word, rest)
        if word == "pytest":
            return check_pytest(rest)
        if word.startswith("tests/") and word.endswith(".sh"):  # tests/run.sh: pytest's arguments
            return check_pytest(rest) + ([] if (REPO / word).is_file() else [f"{word} does not exist"])
    if words[:2] == ["docker", "build"]:
        dockerfile = _option(words, "-f")
        return [] if dockerfile and (REPO / dockerfile).is_file() else [f"no Dockerfile {dockerfile}"]
    if not words or words[0] in UNCHECKED:
        return []
    return [f"{shlex.join(words)}: not a ddtrain command, and {words[0]!r} is not in UNCHECKED"]


# ----------------------------------------------------------------------------- inline code
def _names(cls) -> set[str]:
    aliases = {name: alias for alias, name in getattr(cls, "ALIASES", {}).items()}
    return {aliases.get(f.name, f.name) for f in fields(cls)}


SECTION_KEYS = {
    "model": set().union(*(_names(e.schema) for e in models().values())),
    "data": set().union(*(_names(e.schema) for e in datasets().values())),
    "loss": _names(schema.LossConfig),
    "optim": _names(schema.OptimConfig),
    "comm": _names(schema.CommConfig),
    "trainer": _names(schema.TrainerConfig),
    "scale": _names(ScaleConfig),
    "cluster": _names(Cluster),
}
# A key written +section.key is one the user adds (a keyword of their own model or data set).
_KEY = re.compile(r"(?<![\w./+-])(model|data|loss|optim|comm|trainer|scale|cluster)\.(\w+)")
_OPTION = re.compile(r"(?<![\w./-])\+?(model|data|optim|cluster|experiment)=([\w|\\]+)")


def prose_problems(text: str) -> list[str]:
    problems = []
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`([^`\n]+)`", prose):
        for section, key in _KEY.findall(span):
            if key not in SECTION_KEYS[section] and key not in FILE_SUFFIXES:
                problems.append(f"`{span}`: {section}.{key} is not a key of {section}")
        for group, value in _OPTION.findall(span):
            for option in filter(None, value.replace("\\", "").split("|")):
                if not (REPO / "configs" / group / f"{option}.yaml").is_file():
                    problems.append(f"`{span}`: {group}={option} is not in configs/{group}/")
    return problems


# ----------------------------------------------------------------------------- the tests
@pytest.fixture
def beside_reader_files(tmp_path, monkeypatch, pytestconfig):
    for name, template in READER_FILES.items():
        shutil.copy(template, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    markers = {line.split(":")[0].split("(")[0].strip() for line in pytestconfig.getini("markers")}
    monkeypatch.setattr(sys.modules[__name__], "MARKERS", frozenset(markers))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_documented_commands_match_the_real_options(doc, beside_reader_files):
    text = doc.read_text()
    problems = [f"{c.where}: {p}" for c in bash_commands(text, doc.name) for p in check(c.words)]
    problems += [f"{doc.name}: {p}" for p in prose_problems(text)]
    assert not problems, "\n".join(problems)


def test_the_docs_hold_commands_of_every_kind():
    """Guards the extraction: a parser that found nothing would pass every check."""
    lines = [shlex.join(c.words) for doc in DOCS for c in bash_commands(doc.read_text(), doc.name)]
    for needle in ("ddtrain-launch -n", "ddtrain-scale", "-m ddtrain.cli", "python launch/",
                   "bash launch/", "sbatch launch/", "pytest tests/"):
        assert any(needle in line for line in lines), needle


def test_every_tensorboard_tag_is_documented():
    for doc in ("README.md", "docs/running.md"):
        text = (REPO / doc).read_text()
        assert not [tag for tag in TAGS.values() if f"`{tag}`" not in text], doc


BOGUS = """
```bash
ddtrain data.batch_sizee=64
ddtrain model=gpt data=digits
ddtrain-launch -n 2 --no-such-flag -- model=gpt
ddtrain-launch -n 2 -- trainer.stepz=3
ddtrain-scale scale.no_such_key=1
mpirun -np 2 python launch/bench_interleaved.py --no-such-flag
python -m ddtrain.perf.allreduce --max-bytes
bash launch/no_such_script.sh
bash tests/run.sh -m "not sloow"
frobnicate --now
```
"""


def test_the_checker_rejects_what_does_not_exist(beside_reader_files):
    commands = bash_commands(BOGUS, "bogus.md")
    assert len(commands) == 10
    for command in commands:
        assert check(command.words), f"{command.words} passed the checker"
    assert check(("ddtrain", "data.batch_size=64")) == []
    assert len(prose_problems("`comm.bucket_mbb` and `model=gptt`")) == 2
    assert prose_problems("`comm.bucket_mb`, `model=gpt\\|rnn`, `model.pt`") == []
