"""Where CRD schemas come from: the cluster (`kubectl get crd`), a file/folder, or the packaged copy.

Order: an explicit `--crd` wins; else a reachable cluster's installed CRDs; else the CRDs shipped
inside this package (`kserve/` from kserve/kserve, `monitoring/` from prometheus-operator; each
folder has its SOURCE and LICENSE). A 39k-line CRD takes seconds to parse, so parsed CRDs are
cached as JSON keyed by the file's SHA-256 (the cache is an optimisation only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kbundle.atomic import atomic_write

CRD_KIND = "CustomResourceDefinition"


class CrdSourceError(Exception):
    """No usable CRDs (missing file, no CRD inside, invalid YAML); the message says which."""


@dataclass(frozen=True)
class CrdVersion:
    """One served version of one CRD: what an object with this apiVersion/kind is checked against."""

    group: str
    version: str
    kind: str
    schema: dict[str, Any]
    source: str


@dataclass
class CrdSet:
    versions: dict[tuple[str, str], CrdVersion] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)

    def add_crd(self, crd: dict[str, Any], source: str) -> None:
        spec = crd.get("spec") or {}
        group, kind = spec.get("group", ""), (spec.get("names") or {}).get("kind", "")
        for version in spec.get("versions") or []:
            schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or {}
            if version.get("served", True):
                api_version = f"{group}/{version['name']}"
                self.versions[(api_version, kind)] = CrdVersion(
                    group, version["name"], kind, schema, source
                )

    def lookup(self, api_version: str, kind: str) -> CrdVersion | None:
        return self.versions.get((api_version, kind))

    def served_versions(self, api_version: str, kind: str) -> list[str]:
        """Served apiVersions for `kind`, to say what was expected when the version is wrong."""
        return sorted(av for (av, k) in self.versions if k == kind)


PACKAGED_GROUPS = ("kserve", "monitoring")


def packaged_dir(group: str) -> Path:
    """The folder of packaged CRDs for `group` ("kserve" or "monitoring"), in any install."""
    if group not in PACKAGED_GROUPS:
        raise ValueError(f"unknown CRD group {group!r}; one of {', '.join(PACKAGED_GROUPS)}")
    return Path(__file__).resolve().parent / group


def load_packaged() -> CrdSet:
    """KServe and Prometheus Operator CRDs shipped with kbundle; CrdSourceError if a file is gone."""
    crds = CrdSet()
    for group in PACKAGED_GROUPS:
        folder = packaged_dir(group)
        crds.versions.update(load_crd_path(folder).versions)
        crds.sources.append(f"packaged {group} CRDs ({folder})")
    return crds


def _cache_dir() -> Path:
    root = os.environ.get("KBUNDLE_CACHE") or Path.home() / ".cache" / "kbundle"
    return Path(root) / "crd-json"


def read_documents(path: Path) -> list[Any]:
    """All YAML documents of a CRD file, through the JSON cache."""
    raw = path.read_bytes()
    key = hashlib.sha256(raw).hexdigest()
    cached = _cache_dir() / f"{key}.json"
    if cached.is_file():
        try:
            return json.loads(cached.read_text())
        except (OSError, ValueError):
            pass
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs = [d for d in yaml.load_all(raw, Loader=loader) if d is not None]
    _write_cache(cached, docs)
    return docs


def _write_cache(cached: Path, docs: list[Any]) -> None:
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cached, json.dumps(docs, default=str))
    except OSError:
        pass  # a read-only home only costs speed


def _add_docs(crds: CrdSet, docs: list[Any], source: str) -> None:
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") == CRD_KIND:
            crds.add_crd(doc, source)
        elif doc.get("kind") == "List" or doc.get("kind", "").endswith("List"):
            _add_docs(crds, doc.get("items") or [], source)


def load_crd_path(path: Path) -> CrdSet:
    """CRDs from a file or every *.yaml/*.yml/*.json in a folder; CrdSourceError when none found."""
    if not path.exists():
        raise CrdSourceError(f"{path}: no such CRD file or folder")
    files = (
        sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
        if path.is_dir()
        else [path]
    )
    crds = CrdSet(sources=[str(path)])
    for file in files:
        try:
            _add_docs(crds, read_documents(file), str(file))
        except yaml.YAMLError as exc:
            raise CrdSourceError(f"{file}: not valid YAML: {exc}") from exc
    if not crds.versions:
        raise CrdSourceError(f"{path}: no CustomResourceDefinition found")
    return crds


def load_cluster_crds(timeout_s: float = 10.0) -> CrdSet | None:
    """The CRDs installed in the current kubectl context, or None when no cluster answers."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    try:
        out = subprocess.run(
            [kubectl, "get", "crd", "-o", "json", f"--request-timeout={int(timeout_s)}s"],
            capture_output=True,
            timeout=timeout_s + 5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    try:
        listing = json.loads(out.stdout)
    except ValueError:
        return None
    crds = CrdSet(sources=["cluster (kubectl get crd)"])
    _add_docs(crds, listing.get("items") or [], "cluster")
    return crds if crds.versions else None


def resolve_crds(crd_arg: str | None, use_cluster: bool = True) -> CrdSet:
    """The CRD set to validate against, following the documented order; CrdSourceError if none."""
    if crd_arg:
        return load_crd_path(Path(crd_arg))
    if use_cluster:
        crds = load_cluster_crds()
        if crds is not None:
            return crds
    return load_packaged()
