"""The locks in locks/: complete, hash-pinned, consistent, and what .venv actually has installed."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "locks"
sys.path.insert(0, str(REPO / "scripts"))
import lockcheck  # noqa: E402

IMAGE_LOCKS = ["predictor-cpu", "predictor-torch", "transformer", "storage-init", "build"]
SOURCES = ["src", "predictors", "transformers", "storage-init"]
# Modules of packages that only the GPU image installs (not importable here): module -> distribution.
GPU_MODULES = {"tensorrt": "tensorrt-cu12", "cuda": "cuda-python"}


def _requirement_name(text: str) -> str:
    return lockcheck.normalize(re.split(r"[\s\[<>=!~;]", text.strip(), maxsplit=1)[0])


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _declared() -> set[str]:
    project = _pyproject()
    names = {_requirement_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        names |= {_requirement_name(r) for r in extra if not r.startswith("kbundle")}
    return names


def test_the_venv_has_exactly_the_dev_lock():
    diff = lockcheck.differences(lockcheck.read_lock(LOCKS / "dev.txt"), lockcheck.installed())
    assert diff == [], "\n".join(diff) + "\n(run: source scripts/env.sh)"


def test_the_comparison_reports_wrong_missing_and_extra_packages():
    diff = lockcheck.differences(
        {"numpy": "2.0.0", "orjson": "3.0"}, {"numpy": "2.1.0", "rich": "1"}
    )
    assert diff == [
        "numpy: locked 2.0.0, installed 2.1.0",
        "orjson: locked 3.0, installed nothing",
        "rich: installed 1, not in the lock",
    ]


@pytest.mark.parametrize("name", ["dev", *IMAGE_LOCKS, "predictor-gpu"])
def test_every_pin_is_exact_and_hash_checked(name):
    text = (LOCKS / f"{name}.txt").read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 1)[1].strip())
    assert entries, name
    for entry in entries:
        assert "==" in entry.split()[0], f"{name}: not pinned: {entry.splitlines()[0]}"
        assert "--hash=sha256:" in entry, f"{name}: no hash for {entry.splitlines()[0]}"


@pytest.mark.parametrize("name", IMAGE_LOCKS)
def test_images_ship_the_versions_the_tests_ran_against(name):
    dev = lockcheck.read_lock(LOCKS / "dev.txt")
    image = lockcheck.read_lock(LOCKS / f"{name}.txt")
    differ = {pkg: (v, dev.get(pkg)) for pkg, v in image.items() if pkg in dev and dev[pkg] != v}
    assert differ == {}, f"{name} vs dev: (image, dev) {differ}"


def test_every_direct_dependency_is_in_the_dev_lock():
    """All but the GPU extra, which has its own lock (and TensorRT none: locks/README.md)."""
    dev = lockcheck.read_lock(LOCKS / "dev.txt")
    gpu = {_requirement_name(r) for r in _pyproject()["optional-dependencies"]["gpu"]}
    missing = sorted(_declared() - set(dev) - gpu)
    assert missing == [], f"declared in pyproject but not locked: {missing} (bash scripts/lock.sh)"


def _top_level_imports() -> set[str]:
    names: set[str] = set()
    for folder in SOURCES:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"kbundle", "__future__"}


def test_every_third_party_import_is_declared_in_pyproject():
    owners = importlib.metadata.packages_distributions()
    declared = _declared()
    undeclared = {}
    for module in sorted(_top_level_imports()):
        dists = {lockcheck.normalize(d) for d in owners.get(module, [GPU_MODULES.get(module, "?")])}
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert undeclared == {}, f"imported but not declared (module: distributions): {undeclared}"


def test_the_gpu_lock_pins_what_the_gpu_extra_allows():
    from packaging.requirements import Requirement

    pins = lockcheck.read_lock(LOCKS / "predictor-gpu.txt")
    for text in _pyproject()["optional-dependencies"]["gpu"]:
        req = Requirement(text)
        name = lockcheck.normalize(req.name)
        if name in pins:
            assert req.specifier.contains(pins[name]), (
                f"{name}=={pins[name]} outside {req.specifier}"
            )
    assert "onnxruntime-gpu" in pins and "onnxruntime" not in pins
