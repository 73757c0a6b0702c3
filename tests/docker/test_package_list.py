"""Every Python package folder ships: setuptools lists packages by name here, and a subpackage left
out imports in the checkout (editable install) but not from the wheel or the container image."""

from __future__ import annotations

from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]


def on_disk() -> set[str]:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for name, folder in setuptools["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO / folder).parts
            found.add(".".join((name, *parts)))
    return found


def test_every_package_folder_is_declared():
    packages = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    missing = sorted(on_disk() - packages)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
