"""Every ddtrain subpackage and every config folder ships: pyproject lists packages explicitly, so
a new folder that is not listed works in an editable checkout and is missing from a wheel.
(tests/packaging/test_wheel.py builds the wheel and looks inside.)"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def listed_packages() -> set[str]:
    # A regex, not tomllib: that module needs Python 3.11 and we support 3.10.
    block = re.search(r"^packages = \[(.*?)\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
    return set(re.findall(r'"([\w.]+)"', block.group(1)))


def test_every_subpackage_is_listed_in_pyproject():
    found = {"ddtrain." + ".".join(p.parent.relative_to(ROOT / "ddtrain").parts)
             for p in (ROOT / "ddtrain").rglob("__init__.py")}
    found = {name.rstrip(".") for name in found}
    listed = listed_packages()
    assert found <= listed, sorted(found - listed)


def test_every_config_folder_is_listed_in_pyproject():
    # setuptools ships a folder's YAML only when the folder is a listed package (ddtrain.configs.X).
    folders = {".".join(("ddtrain", "configs", *p.parent.relative_to(ROOT / "configs").parts))
               for p in (ROOT / "configs").rglob("*.yaml")}
    listed = listed_packages()
    assert folders <= listed, sorted(folders - listed)
