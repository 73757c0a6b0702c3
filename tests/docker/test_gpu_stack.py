"""The GPU image holds one CUDA stack: docker/predictor-gpu.Dockerfile's CUDA base and the `gpu`
extra's wheels (and any lock file pinning them) agree on the CUDA major, TensorRT's libraries are on
the loader path for ONNX Runtime's TensorRT EP, and the image claims only the engines it carries.
Static: no Docker engine and no GPU here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "predictor-gpu.Dockerfile"

# onnxruntime-gpu on PyPI: the CUDA major each release line is built for (ORT CUDA EP requirements
# page: "starting ORT 1.19, CUDA 12.x becomes default version ... in pypi"; 1.17/1.18 are CUDA 11.8).
# Releases from 1.24 on are not mapped (not verified here): a range that admits them fails below.
ORT_RELEASES = {"1.17.3": 11, "1.18.1": 11, "1.19.0": 12, "1.20.1": 12, "1.22.0": 12, "1.23.2": 12}
ORT_UNMAPPED = ("1.24.1", "1.25.0", "1.31.1")


def base_cuda() -> tuple[int, str]:
    """(CUDA major, image tag) of the Dockerfile's CUDA_RUNTIME base."""
    match = re.search(r"^ARG CUDA_RUNTIME=(\S+)$", DOCKERFILE.read_text(), re.M)
    assert match, "predictor-gpu.Dockerfile: no ARG CUDA_RUNTIME=<nvidia/cuda image>"
    tag = match.group(1)
    version = re.match(r"nvidia/cuda:(\d+)\.(\d+)", tag)
    assert version, f"base {tag} is not an nvidia/cuda image with a CUDA version"
    return int(version.group(1)), tag


def gpu_extra() -> dict[str, SpecifierSet]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["optional-dependencies"]["gpu"]]
    return {r.name: r.specifier for r in reqs}


def lock_pins() -> dict[str, str]:
    """`name==version` pins of the GPU wheels in any lock/requirements file (branch `images`)."""
    pins: dict[str, str] = {}
    files = [*REPO.glob("*.lock"), *REPO.glob("requirements*.txt"), *REPO.glob("requirements/*")]
    files += sorted(REPO.glob("locks/*.txt"))  # scripts/lock.sh
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            found = re.match(
                r"^(onnxruntime-gpu|tensorrt[\w-]*|cuda-python|cuda-bindings)==(\S+)", line
            )
            if found:
                pins[f"{path.name}:{found.group(1)}"] = found.group(2).split(";")[0]
    return pins


def test_base_is_a_cuda_runtime_with_cudnn() -> None:
    major, tag = base_cuda()
    assert "cudnn" in tag and "runtime" in tag, tag  # ORT's CUDA EP needs cuDNN; no devel image


def test_tensorrt_wheels_are_the_base_cuda_flavour_and_the_10_line() -> None:
    major, tag = base_cuda()
    extra = gpu_extra()
    assert "tensorrt" not in extra, (
        "bare `tensorrt` picks its CUDA flavour itself: name tensorrt-cuNN"
    )
    (name,) = [n for n in extra if n.startswith("tensorrt-cu")]
    assert name == f"tensorrt-cu{major}", f"{name} on a CUDA {major} base ({tag})"
    spec = extra[name]
    assert spec.contains("10.16.1.11") and not spec.contains("11.0.0.114"), (
        f"{name}{spec}: kbundle's builder is written for the TensorRT 10 API (TensorRT 11 removed it)"
    )


def test_cuda_python_is_the_base_cuda_major_and_releases_the_gil() -> None:
    major, tag = base_cuda()
    spec = gpu_extra()["cuda-python"]
    assert not spec.contains(f"{major + 1}.0.0"), (
        f"cuda-python{spec} admits CUDA {major + 1} on {tag}"
    )
    assert spec.contains(f"{major}.9.7"), f"cuda-python{spec} admits no CUDA {major} release"
    assert not spec.contains("12.9.0"), "cuda-python before 12.9.1 holds the GIL in CUDA calls"


def test_onnxruntime_gpu_admits_only_builds_for_the_base_cuda_major() -> None:
    major, tag = base_cuda()
    spec = gpu_extra()["onnxruntime-gpu"]
    admitted = {v: cuda for v, cuda in ORT_RELEASES.items() if spec.contains(v)}
    assert admitted, f"onnxruntime-gpu{spec} admits none of {list(ORT_RELEASES)}"
    wrong = {v: cuda for v, cuda in admitted.items() if cuda != major}
    assert not wrong, f"onnxruntime-gpu{spec} admits CUDA {wrong} builds on {tag}"
    unmapped = [v for v in ORT_UNMAPPED if spec.contains(v)]
    assert not unmapped, f"onnxruntime-gpu{spec} admits {unmapped}, whose CUDA major is unverified"


def test_locked_gpu_wheels_fall_in_the_extra_ranges() -> None:
    pins = lock_pins()
    if not pins:
        pytest.skip("no lock file pins GPU wheels yet (pyproject's ranges are checked above)")
    extra = gpu_extra()
    for where, version in pins.items():
        name = where.split(":")[1]
        if name in extra:
            assert extra[name].contains(version), f"{where}=={version} outside {extra[name]}"


def test_tensorrt_libraries_are_registered_with_the_loader_for_ort() -> None:
    text = DOCKERFILE.read_text()
    trt_major = 10  # the extra's line (checked above)
    assert "tensorrt_libs" in text and "ldconfig" in text, (
        "libnvinfer from the pip wheels is not on the loader path: ORT's TensorRT EP falls back to CUDA"
    )
    assert f"libnvinfer.so.{trt_major}" in text, "the image build does not check libnvinfer loads"


def test_image_claims_only_the_engines_it_carries() -> None:
    text = DOCKERFILE.read_text()
    installs_torch = re.search(r"kbundle\[[^\]]*torch", text) or re.search(r"\btorch==", text)
    if installs_torch:
        return
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "model.pt2" in header and "not served" in header, (
        "the GPU image has no torch: its header must say model.pt2 is not served from it"
    )
    docs = (REPO / "docs" / "gpu-engines.md").read_text()
    assert "predictor-gpu image holds no PyTorch" in docs
