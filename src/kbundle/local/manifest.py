"""Read an InferenceService file into the few facts `kbundle up` needs to run it locally.

Which component is ours is decided once, here (docs/up.md, "Which containers run"):
1. the component annotation `kbundle.io/component: predictor|transformer` wins;
2. else a custom container whose image is one of ours: a path with a `kbundle` segment and the
   name `predictor-cpu`, `predictor-gpu`, `predictor` or `transformer` (any tag or digest);
3. else `spec.predictor.model` with a modelFormat our predictor serves (onnx, tensorrt, pytorch).
Anything else is refused with a message naming the field, because running a stranger's image
as our predictor would answer with the wrong model.

The file is read by the one manifest reader (`kbundle.manifests.documents`, with the hostile-YAML
limits of `yamlguard`), and deployment mode, annotations and "which container serves" come from
`kbundle.manifests.isvc`, the same code `kbundle validate` and `kbundle canary` use.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbundle.errors import ConfigError
from kbundle.manifests import isvc
from kbundle.manifests.yamlguard import MAX_BYTES

COMPONENT_ANNOTATION = "kbundle.io/component"
MODULES = {"predictor": "kbundle.predictors", "transformer": "kbundle.transformers"}
IMAGE_NAMES = {
    "predictor-cpu": "predictor",
    "predictor-gpu": "predictor",
    "predictor": "predictor",
    "transformer": "transformer",
}
MODEL_FORMATS = {"onnx", "tensorrt", "pytorch", "torch", "kbundle"}
DEFAULT_MOUNT = "/mnt/models"
KNATIVE, STANDARD = isvc.KNATIVE, isvc.STANDARD


@dataclass(frozen=True)
class ComponentSpec:
    """One component (predictor or transformer) as the controller would launch it."""

    role: str  # "predictor" | "transformer": where it sits in the InferenceService
    module: str  # the kbundle module that runs it
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    storage: tuple[tuple[str, str], ...]  # (uri, mount path) pairs, storage-init's contract
    annotations: tuple[tuple[str, str], ...] = ()
    min_replicas: int = 1
    container_concurrency: int | None = None
    model_style: bool = False  # spec.predictor.model (a runtime's args) vs custom containers

    @property
    def env_map(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def annotation_map(self) -> dict[str, str]:
        return dict(self.annotations)


@dataclass(frozen=True)
class Variant:
    """What one revision (Knative) or one Standard-mode target runs: a predictor, maybe a transformer."""

    predictor: ComponentSpec
    transformer: ComponentSpec | None


@dataclass(frozen=True)
class InferenceServiceSpec:
    name: str
    namespace: str
    mode: str  # KNATIVE | STANDARD
    annotations: dict[str, str]
    variant: Variant
    canary_percent: int | None  # Knative canaryTrafficPercent (predictor's, else transformer's)
    standard_canaries: tuple[tuple[str, Variant, int], ...] = ()  # Standard spec.canary[]
    template_hash: str = ""  # what makes a new Knative revision (canaryTrafficPercent excluded)
    warnings: tuple[str, ...] = field(default=())


def load_inference_service(path: str | Path) -> InferenceServiceSpec:
    """Parse the first InferenceService in a (multi-document) YAML file; ConfigError on any misfit."""
    path = Path(path)
    try:
        from kbundle.manifests.documents import YamlLoadError, read_bounded

        raw = read_bounded(path)
    except ImportError as exc:  # ruamel.yaml comes with the manifests extra
        raise ConfigError(f"{exc}; install with: pip install 'kbundle[manifests]'") from None
    except YamlLoadError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    return parse_inference_service(first_inference_service(raw, path), source=str(path))


def first_inference_service(raw: bytes, path: Path) -> dict[str, Any]:
    """The first InferenceService of a file's bytes as plain values, read by the one guarded
    manifest reader; ConfigError (one line, file:line) on bad or hostile YAML or when none."""
    try:
        from kbundle.manifests.documents import YamlLoadError, load_text, to_plain
    except ImportError as exc:  # ruamel.yaml comes with the manifests extra
        raise ConfigError(f"{exc}; install with: pip install 'kbundle[manifests]'") from None
    try:
        if len(raw) > MAX_BYTES:
            raise YamlLoadError(
                path, 1, f"file is {len(raw)} bytes; manifests are limited to {MAX_BYTES}"
            )
        docs = load_text(path, raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except YamlLoadError as exc:
        raise ConfigError(str(exc)) from None
    for doc in docs:
        if doc.kind == isvc.ISVC_KIND:
            return to_plain(doc.data)
    raise ConfigError(f"{path}: no InferenceService (kind: InferenceService) in the file")


def parse_inference_service(
    doc: dict[str, Any], source: str = "<manifest>"
) -> InferenceServiceSpec:
    meta = doc.get("metadata") or {}
    name = meta.get("name")
    if not name:
        raise ConfigError(f"{source}: metadata.name is required")
    annotations = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()}
    mode = _mode(annotations, source)
    spec = doc.get("spec") or {}
    if "predictor" not in spec:
        raise ConfigError(f"{source}: spec.predictor is required")
    warnings = []
    if spec.get("explainer"):
        warnings.append("spec.explainer is not run by kbundle up (ignored)")
    predictor = _component(spec["predictor"], "predictor", "spec.predictor", name, source)
    transformer = None
    if spec.get("transformer"):
        transformer = _component(
            spec["transformer"], "transformer", "spec.transformer", name, source
        )
    canary = _canary_percent(spec, source)
    if spec.get("canary") and mode != STANDARD:
        raise ConfigError(
            f"{source}: spec.canary[] is honoured in Standard (RawDeployment) mode only"
        )
    canaries = _standard_canaries(spec, transformer, name, source)
    if mode == STANDARD and canary is not None:
        warnings.append(
            "canaryTrafficPercent is ignored in Standard mode (KServe ignores it too); use spec.canary[]"
        )
        canary = None
    return InferenceServiceSpec(
        name=name,
        namespace=meta.get("namespace") or "default",
        mode=mode,
        annotations=annotations,
        variant=Variant(predictor, transformer),
        canary_percent=canary,
        standard_canaries=canaries,
        template_hash=template_hash(doc),
        warnings=tuple(warnings),
    )


def template_hash(doc: dict[str, Any]) -> str:
    """Hash of what Knative puts in a revision: the spec without the traffic fields, plus annotations."""
    spec = json.loads(json.dumps(doc.get("spec") or {}))
    for part in ("predictor", "transformer", "explainer"):
        if isinstance(spec.get(part), dict):
            spec[part].pop("canaryTrafficPercent", None)
    spec.pop("canary", None)
    annotations = dict((doc.get("metadata") or {}).get("annotations") or {})
    annotations.pop("kubectl.kubernetes.io/last-applied-configuration", None)
    blob = json.dumps({"spec": spec, "annotations": annotations}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _mode(annotations: dict[str, str], source: str) -> str:
    """KServe's names, spelled as KServe spells them (validate flags the same values)."""
    raw = annotations.get(isvc.MODE_ANNOTATION, "Serverless")
    mode = isvc.MODES.get(raw)
    if mode not in (KNATIVE, STANDARD):
        raise ConfigError(
            f"{source}: metadata.annotations {isvc.MODE_ANNOTATION} {raw!r} cannot run locally "
            "(Knative/Serverless or Standard/RawDeployment)"
        )
    return mode


def _canary_percent(spec: dict[str, Any], source: str) -> int | None:
    for part in ("predictor", "transformer"):
        value = (spec.get(part) or {}).get("canaryTrafficPercent")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise ConfigError(
                f"{source}: spec.{part}.canaryTrafficPercent must be an integer 0..100, got {value!r}"
            )
        return value
    return None


def _standard_canaries(
    spec: dict[str, Any], transformer: ComponentSpec | None, isvc_name: str, source: str
) -> tuple[tuple[str, Variant, int], ...]:
    out = []
    for i, entry in enumerate(spec.get("canary") or []):
        where = f"spec.canary[{i}]"
        predictor = (entry or {}).get("predictor") or {}
        name = predictor.get("name")
        if not name:
            raise ConfigError(f"{source}: {where}.predictor.name is required")
        percent = entry.get("trafficPercent")
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ConfigError(
                f"{source}: {where}.trafficPercent must be an integer 0..100, got {percent!r}"
            )
        component = _component(predictor, "predictor", f"{where}.predictor", isvc_name, source)
        out.append((str(name), Variant(component, transformer), percent))
    if sum(p for _, _, p in out) > 100:
        raise ConfigError(f"{source}: spec.canary[] trafficPercent values add up to more than 100")
    return tuple(out)


def _component(
    part: dict[str, Any], role: str, where: str, isvc_name: str, source: str
) -> ComponentSpec:
    annotations = {str(k): str(v) for k, v in (part.get("annotations") or {}).items()}
    common = {
        "annotations": tuple(sorted(annotations.items())),
        "min_replicas": _min_replicas(part, where, source),
        "container_concurrency": part.get("containerConcurrency"),
    }
    if part.get("model") is not None and role == "predictor":
        return _model_component(part["model"], part, where, source, common)
    found = isvc.main_container(part, ()) if part.get("containers") else None
    if found is None or found[0][0] != "containers":
        raise ConfigError(f"{source}: {where} needs containers[] or (predictor only) model")
    (_, index), container = found
    at = f"{where}.containers[{index}]"
    kind = _recognise(annotations.get(COMPONENT_ANNOTATION), container.get("image", ""), at, source)
    if kind != role:
        raise ConfigError(f"{source}: {at} is a kbundle {kind}, not a {role}")
    env = _env(container.get("env") or [])
    storage = _storage(part, env, where, source)
    return ComponentSpec(
        role=role,
        module=MODULES[kind],
        args=tuple(str(a) for a in container.get("args") or []),
        env=tuple(env.items()),
        storage=storage,
        **common,
    )


def _model_component(
    model: dict, part: dict, where: str, source: str, common: dict
) -> ComponentSpec:
    fmt = str(((model.get("modelFormat") or {}).get("name")) or "").lower()
    if fmt not in MODEL_FORMATS:
        raise ConfigError(
            f"{source}: {where}.model.modelFormat.name {fmt or '(missing)'!r} has no local runtime; kbundle up "
            f"serves {sorted(MODEL_FORMATS)} with its own predictor"
        )
    env = _env(model.get("env") or [])
    uri = model.get("storageUri")
    storage = ((str(uri), DEFAULT_MOUNT),) if uri else _storage(part, env, where, source)
    return ComponentSpec(
        role="predictor",
        module=MODULES["predictor"],
        args=tuple(str(a) for a in model.get("args") or []),
        env=tuple(env.items()),
        storage=storage,
        model_style=True,
        **common,
    )


def _recognise(annotation: str | None, image: str, where: str, source: str) -> str:
    if annotation:
        if annotation not in MODULES:
            raise ConfigError(
                f"{source}: annotation {COMPONENT_ANNOTATION}={annotation!r} must be predictor or transformer"
            )
        return annotation
    kind = image_kind(image)
    if kind is None:
        raise ConfigError(
            f"{source}: {where}.image {image!r} is not a kbundle component. kbundle up runs only its own "
            "images (…/kbundle/predictor-cpu, predictor-gpu, transformer) or a component annotated "
            f"{COMPONENT_ANNOTATION}: predictor|transformer"
        )
    return kind


def image_kind(image: str) -> str | None:
    """'ghcr.io/kbundle/predictor-cpu:0.1' -> 'predictor'; None for an image that is not ours."""
    path = image.split("@", 1)[0]
    last = path.rsplit("/", 1)[-1]
    repo = path.rsplit("/", 1)[0] if "/" in path else ""
    name = last.split(":", 1)[0]
    if name.startswith("kbundle-"):
        name, repo = name[len("kbundle-") :], repo + "/kbundle"
    if "kbundle" not in repo.split("/") and not repo.endswith("kbundle"):
        return None
    return IMAGE_NAMES.get(name)


def _env(items: list[dict]) -> dict[str, str]:
    env = {}
    for item in items:
        if "value" in item:
            env[str(item["name"])] = str(item["value"])
    return env


def _storage(
    part: dict, env: dict[str, str], where: str, source: str
) -> tuple[tuple[str, str], ...]:
    if part.get("storageUris"):
        pairs = []
        for i, item in enumerate(part["storageUris"]):
            if not item.get("uri"):
                raise ConfigError(f"{source}: {where}.storageUris[{i}].uri is required")
            pairs.append((str(item["uri"]), str(item.get("mountPath") or DEFAULT_MOUNT)))
        return tuple(pairs)
    uri = part.get("storageUri") or env.get("STORAGE_URI")
    return ((str(uri), DEFAULT_MOUNT),) if uri else ()


def _min_replicas(part: dict, where: str, source: str) -> int:
    value = part.get("minReplicas", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{source}: {where}.minReplicas must be an integer >= 0, got {value!r}")
    return value
