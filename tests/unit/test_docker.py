"""What can be checked about docker/ without building an image (no Docker daemon here): pinned
base images, COPY sources that exist and are not ignored, ddtrain installed from the copied
tree, root allowed for Open MPI, a CUDA base only for the GPU image, CPU torch for the CPU one."""

from __future__ import annotations

import fnmatch
import posixpath
import re

import pytest

from tests.cli_helpers import REPO

# Keys become test ids: not "gpu", which conftest reads as the gpu marker and skips without CUDA.
IMAGES = {"cuda": REPO / "docker" / "Dockerfile", "cpu": REPO / "docker" / "Dockerfile.cpu"}


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), " ".join(rest.split())))
        pending = ""
    assert not pending, f"{path}: a continued line runs off the end"
    return out


def pyproject_readme_and_scripts() -> tuple[str, set[str]]:
    # Regexes, not tomllib: that module needs Python 3.11 and ddtrain supports 3.10.
    text = (REPO / "pyproject.toml").read_text()
    readme = re.search(r'^readme = "([^"]+)"', text, re.M).group(1)
    table = re.search(r"^\[project\.scripts\]\n(.*?)(?:\n\[|\Z)", text, re.S | re.M).group(1)
    return readme, set(re.findall(r"^([\w-]+) = ", table, re.M))


def args_of(path, word: str) -> list[str]:
    return [rest for w, rest in instructions(path) if w == word]


def ignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(rel: str) -> bool:
    parts = rel.removeprefix("./").rstrip("/").split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(p, pat.removeprefix("**/")) for pat in ignore_patterns() for p in prefixes)


@pytest.mark.parametrize("kind", IMAGES)
def test_base_image_is_pinned_to_a_tag(kind):
    (base,) = args_of(IMAGES[kind], "FROM")
    name, _, tag = base.partition(":")
    assert tag and tag != "latest" and "$" not in base, base
    if kind == "cuda":
        assert name == "nvidia/cuda" and ("runtime" in tag or "devel" in tag), base
    else:
        assert name == "python" and tag.startswith("3.11") and "cuda" not in base.lower(), base


@pytest.mark.parametrize("kind", IMAGES)
def test_every_copy_source_exists_and_survives_dockerignore(kind):
    copies = args_of(IMAGES[kind], "COPY")
    assert copies
    for args in copies:
        *sources, _dest = args.split()
        assert not any(s.startswith("--from") for s in sources), args
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
            assert not ignored(src), f"COPY {src}: excluded by .dockerignore"


@pytest.mark.parametrize("kind", IMAGES)
def test_ddtrain_is_installed_from_what_was_copied(kind):
    path = IMAGES[kind]
    workdir, copied = "/", set()
    for word, rest in instructions(path):
        if word == "WORKDIR":
            workdir = posixpath.join(workdir, rest)
        elif word == "COPY":
            *sources, dest = rest.split()
            for src in sources:
                target = posixpath.normpath(posixpath.join(workdir, dest))
                copied.add(target if not dest.endswith("/") else posixpath.join(target, src))
        elif word == "RUN" and re.search(r"pip install (\S+ )*/opt/ddtrain\b", rest):
            break
    else:
        pytest.fail("no RUN pip install /opt/ddtrain")
    # Everything the build backend needs: the metadata, the readme it names, each package root.
    readme, _ = pyproject_readme_and_scripts()
    needed = {"pyproject.toml", readme, "ddtrain", "configs"}
    assert {f"/opt/ddtrain/{n}" for n in needed} <= copied, copied


@pytest.mark.parametrize("kind", IMAGES)
def test_root_is_allowed_for_open_mpi_and_the_default_command_exists(kind):
    env = " ".join(args_of(IMAGES[kind], "ENV"))
    assert "OMPI_ALLOW_RUN_AS_ROOT=1" in env and "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1" in env
    (cmd,) = args_of(IMAGES[kind], "CMD")
    _, scripts = pyproject_readme_and_scripts()
    assert "ddtrain-launch" in scripts and re.match(r'\["([^"]+)"', cmd).group(1) in scripts, cmd


def test_gpu_image_has_python_311_torch_and_infiniband_userspace():
    runs = " ".join(args_of(IMAGES["cuda"], "RUN"))
    for pkg in ("python3.11", "python3.11-venv", "python3.11-dev", "libibverbs1", "openssh-client"):
        assert re.search(rf"(^|\s){re.escape(pkg)}(\s|$)", runs), pkg
    torch_arg = next(a for a in args_of(IMAGES["cuda"], "ARG") if a.startswith("TORCH="))
    # Both pinned: a torchvision release is built against exactly one torch release.
    assert re.fullmatch(r'TORCH="torch==[\d.]+ torchvision==[\d.]+"', torch_arg), torch_arg
    assert "pip install $TORCH" in runs


def test_cpu_image_takes_torch_from_the_cpu_index():
    runs = " ".join(args_of(IMAGES["cpu"], "RUN"))
    torch_arg = next(a for a in args_of(IMAGES["cpu"], "ARG") if a.startswith("TORCH="))
    assert re.fullmatch(r'TORCH="torch==[\d.]+ torchvision==[\d.]+"', torch_arg), torch_arg
    assert "--index-url https://download.pytorch.org/whl/cpu $TORCH" in runs
    assert "cuda" not in IMAGES["cpu"].read_text().lower().replace("cuda and nccl", "")


def test_dockerignore_keeps_local_state_out():
    patterns = set(ignore_patterns())
    assert {".git", ".venv", "outputs", "**/__pycache__", "*.egg-info"} <= patterns
    assert not ignored("ddtrain/launcher/cli.py") and not ignored("README.md")
    assert ignored(".venv/bin/python") and ignored(".git/HEAD") and ignored("ddtrain/__pycache__/x.pyc")
