"""Session-wide fixtures: the sample model repository, built once (cached across runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from kbundle import samples  # noqa: E402


@pytest.fixture(scope="session")
def sample_models() -> Path:
    """The built sample models dir (`<dir>/digits/v1`, `<dir>/digits/v2`, ...)."""
    return samples.build_all()


@pytest.fixture(scope="session")
def digits_v1(sample_models: Path) -> Path:
    return sample_models / "digits" / "v1"
