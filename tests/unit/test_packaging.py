"""Every ddtrain subpackage ships: pyproject lists packages explicitly, so a new folder that is
not listed works in an editable checkout and is missing from a wheel."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_listed_in_pyproject():
    # A regex, not tomllib: that module needs Python 3.11 and we support 3.10.
    block = re.search(r"^packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    listed = set(re.findall(r'"([\w.]+)"', block.group(1)))
    found = {"ddtrain." + ".".join(p.parent.relative_to(ROOT / "ddtrain").parts)
             for p in (ROOT / "ddtrain").rglob("__init__.py")}
    found = {name.rstrip(".") for name in found}
    assert found <= listed, sorted(found - listed)
