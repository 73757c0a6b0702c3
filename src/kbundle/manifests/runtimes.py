"""Which ServingRuntime serves a short-form InferenceService, decided as KServe's controller does.

The short form names a model format (`spec.predictor.model.modelFormat`) and lets a runtime supply
the container. The controller's rules (pkg/apis/serving/v1beta1/predictor_model.go):
- an explicit `model.runtime` must name a runtime (namespaced ServingRuntime first, then a
  ClusterServingRuntime) that is enabled, single-model, and lists the format (autoSelect not needed);
- otherwise the candidates are the enabled single-model runtimes that list the format with
  `autoSelect: true` (and the version, when the model gives one: `name:version` must match exactly)
  and serve the model's protocol (`protocolVersion`, default v1; a runtime without
  `protocolVersions` serves v1 only); namespaced runtimes come before cluster ones, each group sorted
  by the format's `priority` (a runtime with a priority before one without, higher first); the
  first wins.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kbundle.manifests.findings import Issue, error, warning

RUNTIME_KINDS = ("ServingRuntime", "ClusterServingRuntime")
DEFAULT_PROTOCOL = "v1"
MODEL_PATH = ("spec", "predictor", "model")


@dataclass(frozen=True)
class SupportedFormat:
    name: str
    version: str | None
    auto_select: bool
    priority: int | None


@dataclass(frozen=True)
class Runtime:
    """One ServingRuntime or ClusterServingRuntime, as far as selection needs it, plus its spec."""

    name: str
    kind: str
    formats: tuple[SupportedFormat, ...]
    protocols: tuple[str, ...]
    disabled: bool
    multi_model: bool
    spec: Mapping[str, Any]

    def labels(self, explicit: bool) -> set[str]:
        """The controller's `mt:name[:version]` labels; autoSelect formats only unless explicit."""
        out: set[str] = set()
        for f in self.formats:
            if explicit or f.auto_select:
                out.add(f"mt:{f.name}")
                if f.version is not None:
                    out.add(f"mt:{f.name}:{f.version}")
        return out

    def serves_protocol(self, protocol: str) -> bool:
        return protocol in (self.protocols or (DEFAULT_PROTOCOL,))

    def priority(self, format_name: str) -> int | None:
        return next((f.priority for f in self.formats if f.name == format_name), None)


@dataclass(frozen=True)
class ModelRequest:
    """What a short-form predictor asks for."""

    format_name: str
    format_version: str | None
    runtime: str | None
    protocol: str

    @property
    def label(self) -> str:
        version = f":{self.format_version}" if self.format_version is not None else ""
        return f"mt:{self.format_name}{version}"

    def describe(self) -> str:
        version = f" version {self.format_version}" if self.format_version is not None else ""
        return f"model format {self.format_name}{version} over protocol {self.protocol}"


class RuntimeResolutionError(Exception):
    """No runtime serves the model; `path` is the field to blame."""

    def __init__(self, path: tuple[str, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def _format(raw: Mapping[str, Any]) -> SupportedFormat:
    version = raw.get("version")
    priority = raw.get("priority")
    return SupportedFormat(
        name=str(raw.get("name", "")),
        version=None if version is None else str(version),
        auto_select=raw.get("autoSelect") is True,
        priority=priority if isinstance(priority, int) else None,
    )


def runtime_from(obj: Any) -> Runtime | None:
    """The Runtime in a (plain) Kubernetes object, None for any other object."""
    if not isinstance(obj, Mapping) or obj.get("kind") not in RUNTIME_KINDS:
        return None
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    formats = spec.get("supportedModelFormats") or []
    return Runtime(
        name=str((obj.get("metadata") or {}).get("name", "")),
        kind=str(obj["kind"]),
        formats=tuple(_format(f) for f in formats if isinstance(f, Mapping)),
        protocols=tuple(str(p) for p in spec.get("protocolVersions") or []),
        disabled=spec.get("disabled") is True,
        multi_model=spec.get("multiModel") is True,
        spec=spec,
    )


def runtimes_in(objects: Iterable[Any]) -> list[Runtime]:
    return [rt for rt in map(runtime_from, objects) if rt is not None]


def model_request(isvc: Any) -> ModelRequest | None:
    """The short-form model of an InferenceService; None when its predictor has no `model`."""
    predictor = ((isvc or {}).get("spec") or {}).get("predictor") or {}
    model = predictor.get("model") if isinstance(predictor, Mapping) else None
    if not isinstance(model, Mapping):
        return None
    fmt = model.get("modelFormat") if isinstance(model.get("modelFormat"), Mapping) else {}
    version, runtime = fmt.get("version"), model.get("runtime")
    return ModelRequest(
        format_name=str(fmt.get("name", "")),
        format_version=None if version is None else str(version),
        runtime=None if runtime is None else str(runtime),
        protocol=str(model.get("protocolVersion") or DEFAULT_PROTOCOL),
    )


def _ordered(runtimes: list[Runtime], format_name: str) -> list[Runtime]:
    """Namespaced before cluster runtimes; within each, priority (set before unset, high first)."""

    def key(rt: Runtime) -> tuple[int, int, int]:
        priority = rt.priority(format_name)
        return (rt.kind != "ServingRuntime", priority is None, -(priority or 0))

    return sorted(runtimes, key=key)


def _explicit(request: ModelRequest, runtimes: list[Runtime]) -> Runtime:
    named = [rt for rt in _ordered(runtimes, "") if rt.name == request.runtime]
    path = (*MODEL_PATH, "runtime")
    if not named:
        known = ", ".join(sorted({rt.name for rt in runtimes})) or "none"
        raise RuntimeResolutionError(
            path, f"no ServingRuntime named {request.runtime!r} (runtimes given: {known})"
        )
    runtime = named[0]
    if runtime.disabled or runtime.multi_model:
        why = "disabled" if runtime.disabled else "a multi-model runtime"
        raise RuntimeResolutionError(path, f"runtime {runtime.name} is {why}")
    if request.label not in runtime.labels(explicit=True):
        raise RuntimeResolutionError(
            (*MODEL_PATH, "modelFormat"),
            f"runtime {runtime.name} does not support {request.describe()}",
        )
    return runtime


def resolve(request: ModelRequest, runtimes: list[Runtime]) -> Runtime:
    """The runtime the controller would give this model; RuntimeResolutionError names the field."""
    if request.runtime is not None:
        return _explicit(request, runtimes)
    candidates = [
        rt
        for rt in runtimes
        if not rt.disabled
        and not rt.multi_model
        and request.label in rt.labels(explicit=False)
        and rt.serves_protocol(request.protocol)
    ]
    if not candidates:
        field = _blame(request, runtimes)
        raise RuntimeResolutionError(
            field,
            f"no runtime supports {request.describe()} (runtimes given: "
            f"{', '.join(sorted(rt.name for rt in runtimes)) or 'none'})",
        )
    return _ordered(candidates, request.format_name)[0]


def _blame(request: ModelRequest, runtimes: list[Runtime]) -> tuple[str, ...]:
    """The field that rules the runtimes out: the format when none lists it, else the protocol."""
    listed = [rt for rt in runtimes if request.label in rt.labels(explicit=False)]
    if not listed:
        return (*MODEL_PATH, "modelFormat")
    return (*MODEL_PATH, "protocolVersion")


def check(isvc: Any, runtimes: list[Runtime]) -> list[Issue]:
    """`kbundle validate`'s findings for one InferenceService's runtime selection."""
    request = model_request(isvc)
    if request is None:
        return []
    if not runtimes:
        return [
            warning(
                MODEL_PATH,
                f"no ServingRuntime among the files given: cannot tell which runtime serves "
                f"{request.describe()} (pass the runtime files too)",
                "runtime",
            )
        ]
    try:
        resolve(request, runtimes)
    except RuntimeResolutionError as exc:
        return [error(exc.path, exc.message, "runtime")]
    return []


def load_runtimes(folder: str | Path) -> list[Runtime]:
    """Every ServingRuntime/ClusterServingRuntime in the YAML files of a folder (or one file)."""
    root = Path(folder)
    files = sorted(root.glob("*.y*ml")) if root.is_dir() else [root]
    found: list[Runtime] = []
    for file in files:
        try:
            found += runtimes_in(yaml.safe_load_all(file.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            raise RuntimeResolutionError((), f"{file}: cannot read: {exc}") from exc
    if not found:
        raise RuntimeResolutionError((), f"{folder}: no ServingRuntime or ClusterServingRuntime")
    return found


def _placeholders(value: str, name: str) -> str:
    """KServe fills `{{.Name}}` in a runtime's args with the InferenceService's name."""
    return re.sub(r"\{\{\s*\.Name\s*\}\}", name, value)


def with_runtime(isvc: dict[str, Any], runtimes: list[Runtime]) -> dict[str, Any]:
    """The InferenceService as the controller expands it: predictor.model gets the chosen runtime's
    first container args (placeholders filled) before its own, and the runtime's env under its own
    (same name: the model's wins). Unchanged when the predictor has no `model`."""
    request = model_request(isvc)
    if request is None or not runtimes:
        return isvc
    runtime = resolve(request, runtimes)
    container = (runtime.spec.get("containers") or [{}])[0]
    name = str((isvc.get("metadata") or {}).get("name", ""))
    out = copy.deepcopy(isvc)
    model = out["spec"]["predictor"]["model"]
    args = [_placeholders(str(a), name) for a in container.get("args") or []]
    model["args"] = args + list(model.get("args") or [])
    own = {e.get("name") for e in model.get("env") or []}
    inherited = [e for e in container.get("env") or [] if e.get("name") not in own]
    model["env"] = inherited + list(model.get("env") or [])
    return out
