"""What an InferenceService means beyond its schema: deployment mode, components, containers.

Shared by the webhook rules, the lint and the canary editor so that "which container is the
predictor" and "which mode is this" are decided in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

ISVC_KIND = "InferenceService"
CSC_KIND = "ClusterStorageContainer"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
KNATIVE, STANDARD, MODELMESH = "Knative", "Standard", "ModelMesh"
# Legacy names are normalised by the KServe defaulter (inference_service_defaults.go).
MODES = {
    "Knative": KNATIVE,
    "Serverless": KNATIVE,
    "Standard": STANDARD,
    "RawDeployment": STANDARD,
    "ModelMesh": MODELMESH,
}
COMPONENTS = ("predictor", "transformer", "explainer")
# Predictor implementations that are themselves a container (modelFormat-style or framework).
FRAMEWORKS = (
    "model",
    "sklearn",
    "xgboost",
    "tensorflow",
    "pytorch",
    "triton",
    "onnx",
    "huggingface",
    "pmml",
    "lightgbm",
    "paddle",
)
# Transformer/explainer implementations other than custom containers.
OTHER_IMPLEMENTATIONS = ("art",)
CUSTOM_CONTAINER = "kserve-container"
GPU_SUFFIX = "/gpu"

Path_ = tuple[str | int, ...]


def annotations(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    ann = meta.get("annotations") if isinstance(meta, dict) else None
    return ann if isinstance(ann, dict) else {}


def raw_mode(obj: dict[str, Any]) -> str | None:
    value = annotations(obj).get(MODE_ANNOTATION)
    return None if value is None else str(value)


def deployment_mode(obj: dict[str, Any], default: str = KNATIVE) -> str:
    """Knative, Standard or ModelMesh; an unknown annotation value falls back to `default`."""
    raw = raw_mode(obj)
    return (
        MODES.get(raw, MODES.get(default, KNATIVE))
        if raw is not None
        else MODES.get(default, KNATIVE)
    )


def components(obj: dict[str, Any]) -> Iterator[tuple[str, Path_, dict[str, Any]]]:
    """(name, path, spec) for predictor/transformer/explainer present in spec."""
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    for name in COMPONENTS:
        comp = spec.get(name)
        if isinstance(comp, dict):
            yield name, ("spec", name), comp


def implementations(component: dict[str, Any]) -> list[str]:
    """Which implementations are set: 'containers' for a custom one, or the framework keys."""
    found = [k for k in (*FRAMEWORKS, *OTHER_IMPLEMENTATIONS) if isinstance(component.get(k), dict)]
    if component.get("containers"):
        found.append("containers")
    return found


def containers(component: dict[str, Any], path: Path_) -> Iterator[tuple[Path_, dict[str, Any]]]:
    """Every container of a component: custom containers, init containers, framework container."""
    for key in ("containers", "initContainers"):
        for index, container in enumerate(component.get(key) or []):
            if isinstance(container, dict):
                yield (*path, key, index), container
    for key in FRAMEWORKS:
        if isinstance(component.get(key), dict):
            yield (*path, key), component[key]


def main_container(component: dict[str, Any], path: Path_) -> tuple[Path_, dict[str, Any]] | None:
    """The serving container: the one named kserve-container, else containers[0], else the framework."""
    items = component.get("containers") or []
    for index, container in enumerate(items):
        if isinstance(container, dict) and container.get("name") == CUSTOM_CONTAINER:
            return (*path, "containers", index), container
    if items and isinstance(items[0], dict):
        return (*path, "containers", 0), items[0]
    for key in FRAMEWORKS:
        if isinstance(component.get(key), dict):
            return (*path, key), component[key]
    return None


def env_value(container: dict[str, Any], name: str) -> tuple[int, Any] | None:
    for index, item in enumerate(container.get("env") or []):
        if isinstance(item, dict) and item.get("name") == name:
            return index, item.get("value")
    return None


def gpu_resource_names(obj: dict[str, Any]) -> set[str]:
    """Extended resource names that are GPUs: */gpu plus the isvc's gpu-resource-types annotation."""
    names = set()
    extra = annotations(obj).get("serving.kserve.io/gpu-resource-types")
    if isinstance(extra, str):
        names |= {n.strip().strip('"[]') for n in extra.split(",") if n.strip().strip('"[]')}
    return names


def is_gpu_resource(name: str, extra: set[str]) -> bool:
    return name.endswith(GPU_SUFFIX) or name in extra


def has_gpu(container: dict[str, Any], extra: set[str]) -> bool:
    resources = container.get("resources") or {}
    for section in ("requests", "limits"):
        for name in resources.get(section) or {}:
            if is_gpu_resource(str(name), extra):
                return True
    return False


def arg_value(args: list[Any], flag: str) -> tuple[int, str | None] | None:
    """(index, value) of `--flag VALUE` or `--flag=VALUE` in a container's args/command."""
    for index, arg in enumerate(args):
        text = str(arg)
        if text == flag:
            value = str(args[index + 1]) if index + 1 < len(args) else None
            return index, value
        if text.startswith(flag + "="):
            return index, text.split("=", 1)[1]
    return None


def container_args(container: dict[str, Any]) -> list[Any]:
    return [*(container.get("command") or []), *(container.get("args") or [])]


def canary_predictors(obj: dict[str, Any]) -> Iterator[tuple[Path_, dict[str, Any]]]:
    """(path, predictor) of each spec.canary[] entry (Standard mode canaries)."""
    spec = obj.get("spec")
    items = spec.get("canary") if isinstance(spec, dict) else None
    for index, item in enumerate(items if isinstance(items, list) else []):
        if isinstance(item, dict) and isinstance(item.get("predictor"), dict):
            yield ("spec", "canary", index, "predictor"), item["predictor"]


def serving_units(obj: dict[str, Any]) -> Iterator[tuple[str, Path_, dict[str, Any]]]:
    """Components plus canary predictors: everything that becomes pods."""
    yield from components(obj)
    for path, predictor in canary_predictors(obj):
        yield "predictor", path, predictor
