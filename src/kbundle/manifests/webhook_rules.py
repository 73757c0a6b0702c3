"""The KServe admission webhook's cross-field rules, re-stated so they run before a cluster sees
the object (pkg/apis/serving/v1beta1/inference_service_validation.go, component.go,
predictor_custom.go; spec.canary[] rules from kserve PR #5672). Rules KServe does not have but
that decide whether a canary works are ours and named `kbundle/...`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from kbundle.manifests import isvc, storage_uris
from kbundle.manifests.findings import Issue, error

ISVC_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
AUTOSCALER_CLASSES = ("hpa", "external", "keda", "none")
KNATIVE_CLASS = "autoscaling.knative.dev/class"
KNATIVE_HPA = "hpa.autoscaling.knative.dev"
KPA_METRICS = ("concurrency", "rps")
HPA_METRICS = ("cpu", "memory")
CANARY_FORBIDDEN = (
    "maxReplicas",
    "scaleMetric",
    "scaleMetricType",
    "scaleTarget",
    "autoScaling",
    "canaryTrafficPercent",
)
LOGGER_MODES = ("all", "request", "response")


def check(obj: dict[str, Any], formats: list[dict[str, str]], default_mode: str) -> list[Issue]:
    """All webhook-rule problems of one InferenceService (plain values)."""
    mode = isvc.deployment_mode(obj, default_mode)
    issues = [*_name(obj), *_annotations(obj), *_canary_list(obj, mode)]
    if not isinstance(obj.get("spec"), dict):
        issues.append(
            error(
                ("spec",),
                "Required value: an InferenceService needs spec.predictor",
                "webhook/implementation",
            )
        )
    for name, path, comp in isvc.serving_units(obj):
        issues += _implementation(name, path, comp)
        issues += _extensions(path, comp)
        issues += _autoscaling(obj, mode, path, comp, in_canary="canary" in path)
        issues += _canary_percent(mode, path, comp)
        issues += _storage(path, comp, formats)
        issues += _custom_env(name, path, comp)
    return issues


def _name(obj: dict[str, Any]) -> list[Issue]:
    name = (obj.get("metadata") or {}).get("name")
    if isinstance(name, str) and not ISVC_NAME.match(name):
        return [
            error(
                ("metadata", "name"),
                f"InferenceService name {name!r} must consist of lower case "
                "alphanumeric characters or '-' and start with a letter (regex "
                f"{ISVC_NAME.pattern})",
                "webhook/name",
            )
        ]
    return []


def _annotations(obj: dict[str, Any]) -> list[Issue]:
    out, ann, path = [], isvc.annotations(obj), ("metadata", "annotations")
    raw = isvc.raw_mode(obj)
    if raw is not None and raw not in isvc.MODES:
        out.append(
            error(
                (*path, isvc.MODE_ANNOTATION),
                f"unknown deployment mode {raw!r}; one of {', '.join(isvc.MODES)}",
                "webhook/deployment-mode",
            )
        )
    value = ann.get(AUTOSCALER_CLASS)
    if value is not None and value not in AUTOSCALER_CLASSES:
        out.append(
            error(
                (*path, AUTOSCALER_CLASS),
                f"[{value}] is not a supported autoscaler class "
                f"type (one of {', '.join(AUTOSCALER_CLASSES)})",
                "webhook/autoscaler-class",
            )
        )
    return out


def _implementation(name: str, path: isvc.Path_, comp: dict[str, Any]) -> list[Issue]:
    found = isvc.implementations(comp)
    if len(found) == 1:
        return []
    what = "none" if not found else ", ".join(found)
    return [
        error(
            path,
            f"exactly one implementation must be specified in the {name} "
            f"(containers or one of model, {', '.join(isvc.FRAMEWORKS[1:])}); found {what}",
            "webhook/implementation",
        )
    ]


def _extensions(path: isvc.Path_, comp: dict[str, Any]) -> Iterator[Issue]:
    low, high = comp.get("minReplicas"), comp.get("maxReplicas", 0)
    if isinstance(low, int) and low < 0:
        yield error(
            (*path, "minReplicas"), "'MinReplicas' cannot be less than 0", "webhook/replicas"
        )
    if isinstance(high, int) and high < 0:
        yield error(
            (*path, "maxReplicas"), "'MaxReplicas' cannot be less than 0", "webhook/replicas"
        )
    effective_low = low if isinstance(low, int) else 1
    if isinstance(high, int) and high != 0 and effective_low > high:
        yield error(
            (*path, "minReplicas"),
            f"'MinReplicas' ({effective_low}) cannot be greater than MaxReplicas ({high})",
            "webhook/replicas",
        )
    cc = comp.get("containerConcurrency")
    if isinstance(cc, int) and cc < 0:
        yield error(
            (*path, "containerConcurrency"), "parallelism cannot be less than 0", "webhook/replicas"
        )
    logger = comp.get("logger")
    if isinstance(logger, dict) and "mode" in logger and logger["mode"] not in LOGGER_MODES:
        yield error((*path, "logger", "mode"), "invalid logger type", "webhook/logger")


def _autoscaler(obj: dict[str, Any], mode: str) -> str:
    """'kpa', 'hpa', 'keda', 'external' or 'none': which autoscaler judges scaleMetric."""
    ann = isvc.annotations(obj)
    if mode == isvc.STANDARD:
        return str(ann.get(AUTOSCALER_CLASS, "hpa"))
    return "hpa" if ann.get(KNATIVE_CLASS) == KNATIVE_HPA else "kpa"


def _autoscaling(
    obj: dict[str, Any], mode: str, path: isvc.Path_, comp: dict[str, Any], in_canary: bool
) -> Iterator[Issue]:
    if in_canary or mode == isvc.MODELMESH:
        return
    scaler, metric, target = (
        _autoscaler(obj, mode),
        comp.get("scaleMetric"),
        comp.get("scaleTarget"),
    )
    rule = "webhook/scale-metric"
    if scaler == "kpa":
        if "deploymentStrategy" in comp:
            yield error(
                (*path, "deploymentStrategy"),
                "customizing deploymentStrategy is only supported "
                "for raw deployment (Standard) mode",
                rule,
            )
        metric = metric or "concurrency"
        if metric not in KPA_METRICS:
            yield error(
                (*path, "scaleMetric"),
                f"[{metric}] is not a supported metric for the Knative "
                f"Pod Autoscaler (KPA: concurrency or rps); cpu and memory need the HPA class "
                f"({KNATIVE_CLASS}: {KNATIVE_HPA})",
                rule,
            )
        elif metric == "rps" and isinstance(target, int) and target < 1:
            yield error((*path, "scaleTarget"), "the target for rps should be at least 1", rule)
    elif scaler == "hpa":
        metric = metric or "cpu"
        if metric not in HPA_METRICS:
            yield error(
                (*path, "scaleMetric"),
                f"[{metric}] is not a supported metric for the HPA "
                "(cpu or memory); concurrency and rps need Knative mode with the KPA",
                rule,
            )
        elif isinstance(target, int) and metric == "cpu" and not 1 <= target <= 100:
            yield error(
                (*path, "scaleTarget"),
                "the target utilization percentage should be a [1-100] integer",
                rule,
            )
        elif isinstance(target, int) and metric == "memory" and target < 1:
            yield error(
                (*path, "scaleTarget"), "the target memory should be greater than 1 MiB", rule
            )
    elif scaler == "keda" and "scaleMetric" in comp:
        yield error((*path, "scaleMetric"), "ScaleMetric is not supported for KEDA", rule)


def _canary_percent(mode: str, path: isvc.Path_, comp: dict[str, Any]) -> Iterator[Issue]:
    if "canaryTrafficPercent" not in comp or "canary" in path:
        return
    value, where = comp["canaryTrafficPercent"], (*path, "canaryTrafficPercent")
    if isinstance(value, int) and not 0 <= value <= 100:
        yield error(
            where, f"canaryTrafficPercent {value} is outside 0-100", "kbundle/canary-percent"
        )
    if mode != isvc.KNATIVE:
        yield error(
            where,
            f"canaryTrafficPercent is ignored in {mode} mode (only the Knative reconciler "
            "splits traffic): the new model would take 100% at once; use spec.canary[] instead",
            "kbundle/canary-mode",
        )


def _canary_list(obj: dict[str, Any], mode: str) -> list[Issue]:
    items = (obj.get("spec") or {}).get("canary")
    if not isinstance(items, list) or not items:
        return []
    path = ("spec", "canary")
    if mode != isvc.STANDARD:
        return [
            error(
                path,
                f"spec.canary[] is only supported in Standard (RawDeployment) mode, this "
                f"InferenceService is {mode}; use predictor.canaryTrafficPercent",
                "webhook/canary",
            )
        ]
    out, names, total = [], {}, 0
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        total += item.get("trafficPercent") if isinstance(item.get("trafficPercent"), int) else 0
        predictor = item.get("predictor") if isinstance(item.get("predictor"), dict) else {}
        name = predictor.get("name")
        ppath = (*path, index, "predictor")
        if not name:
            out.append(
                error(
                    (*ppath, "name"),
                    "canary predictor name is required (it names the "
                    "canary's Deployment and Service)",
                    "webhook/canary",
                )
            )
        elif name in names:
            out.append(
                error(
                    (*ppath, "name"),
                    f"canary name {name!r} is already used by spec.canary[{names[name]}]",
                    "webhook/canary",
                )
            )
        else:
            names[name] = index
        out += [
            error(
                (*ppath, key),
                f"{key} is not allowed on a canary: canaries run fixed replicas (no autoscaling)",
                "webhook/canary",
            )
            for key in CANARY_FORBIDDEN
            if key in predictor
        ]
    if total > 100:
        out.append(
            error(
                path,
                f"the canary trafficPercent values add up to {total}, more than 100",
                "webhook/canary",
            )
        )
    return out


def _storage(
    path: isvc.Path_, comp: dict[str, Any], formats: list[dict[str, str]]
) -> Iterator[Issue]:
    uris = list(storage_uris.declared_uris(comp, path))
    for where, uri in uris:
        if not storage_uris.is_supported(uri, formats):
            yield error(
                where,
                f"storage URI {uri!r} is not supported: use one of "
                f"{', '.join(storage_uris.SUPPORTED_PREFIXES)}, an Azure blob URL, a local "
                "path, or a ClusterStorageContainer that matches it",
                "webhook/storage-uri",
            )
    singles = [w for w, _ in uris if "storageUris" not in w]
    if singles and comp.get("storageUris"):
        yield error(
            (*path, "storageUris"),
            "Setting both StorageURI and StorageURIs is not supported.",
            "webhook/storage-uri",
        )
    for index, item in enumerate(comp.get("storageUris") or []):
        mount = item.get("mountPath") if isinstance(item, dict) else None
        if isinstance(mount, str) and (not mount.startswith("/") or ".." in mount or mount == "/"):
            yield error(
                (*path, "storageUris", index, "mountPath"),
                f"storage path {mount!r} must be absolute, not '/', and without '..'",
                "webhook/storage-uri",
            )


def _custom_env(name: str, path: isvc.Path_, comp: dict[str, Any]) -> Iterator[Issue]:
    for index, container in enumerate(comp.get("containers") or []):
        if not isinstance(container, dict):
            continue
        cpath = (*path, "containers", index)
        protocol = isvc.env_value(container, "PROTOCOL")
        if name == "predictor" and protocol is not None and protocol[1] not in ("v1", "v2"):
            yield error(
                (*cpath, "env", protocol[0], "value"),
                f"invalid protocol {protocol[1]!r}. Must be one of [v1, v2]",
                "webhook/protocol",
            )
        if (
            name == "predictor"
            and container.get("name") == "transformer-container"
            and isvc.env_value(container, storage_uris.STORAGE_URI_ENV) is not None
        ):
            yield error(
                cpath,
                "storage uri should not be specified in transformer container",
                "webhook/storage-uri",
            )
