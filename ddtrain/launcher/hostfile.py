"""What a hostfile says: the nodes and how many ranks each takes.

Open MPI writes ``node01 slots=8``, MPICH and Intel MPI ``node01:8``; ``#`` starts a comment.
A study needs the ranks per node to know which of its workers share a node (and its link).
"""

from __future__ import annotations

import re
from pathlib import Path

_OMPI_SLOTS = re.compile(r"^slots=(\d+)$")
_HYDRA = re.compile(r"^(.+):(\d+)$")


class HostfileError(ValueError):
    """A hostfile that does not say what is needed; the message is one line with the fix."""


def parse_hostfile(text: str, source: str = "hostfile") -> list[tuple[str, int]]:
    """``[(node, ranks), ...]`` in file order; a node without a rank count is refused (Open MPI
    would then use that node's core count, which cannot be seen from here)."""
    nodes = []
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        slots = [int(m.group(1)) for f in fields[1:] if (m := _OMPI_SLOTS.match(f))]
        hydra = _HYDRA.match(fields[0])
        if slots:
            nodes.append((fields[0], slots[-1]))
        elif hydra:
            nodes.append((hydra.group(1), int(hydra.group(2))))
        else:
            raise HostfileError(f"{source} line {number} ({raw.strip()!r}) gives no rank count; fix: write "
                                f"'{fields[0]} slots=8' (Open MPI) or '{fields[0]}:8' (MPICH, Intel MPI)")
    if not nodes:
        raise HostfileError(f"{source} names no node; fix: one line per node, e.g. 'node01 slots=8'")
    return nodes


def read_hostfile(path: str | Path) -> list[tuple[str, int]]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise HostfileError(f"cannot read hostfile {str(path)!r} ({e.strerror}); fix: give an existing "
                            "hostfile (see launch/hostfile.example)") from None
    return parse_hostfile(text, f"hostfile {str(path)!r}")


def ranks_per_node(nodes: list[tuple[str, int]], world: int) -> list[int]:
    """How ``world`` ranks fill the nodes in order (mpirun's ``--map-by slot``)."""
    placed, left = [], world
    for _, slots in nodes:
        if left <= 0:
            break
        placed.append(min(slots, left))
        left -= slots
    if left > 0:
        raise HostfileError(f"{world} ranks do not fit the hostfile's {sum(s for _, s in nodes)} slots; "
                            "fix: add nodes or slots, or run fewer ranks")
    return placed
