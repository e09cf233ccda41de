"""Every Python package folder ships: pyproject.toml lists each one (a wheel or a
non-editable install leaves out a folder it does not list, e.g. a registry's plug-in folder)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {folder: name for name, folder in config["package-dir"].items()}
    found = set()
    for top in ("core", "app", "kernels", "resources"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([folders[top], *rel.parts]))
    assert found - set(config["packages"]) == set(), "add these to [tool.setuptools] packages in pyproject.toml"
