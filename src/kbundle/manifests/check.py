"""`kbundle validate`'s engine: files -> documents -> schema + webhook + lint findings."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbundle.manifests import (
    isvc,
    lint_rules,
    runtimes,
    schema,
    settings_rules,
    storage_uris,
    webhook_rules,
)
from kbundle.manifests.crds import CrdSet
from kbundle.manifests.documents import Document, YamlLoadError, expand_paths, load_file, to_plain
from kbundle.manifests.findings import ERROR, WARNING, Finding, Issue, error


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # "file: Kind/name" of each object checked
    skipped: list[str] = field(default_factory=list)  # objects with no CRD (built-in kinds etc.)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]


def validate_paths(
    paths: Iterable[str | Path], crds: CrdSet, default_mode: str = isvc.KNATIVE, lint: bool = True
) -> Report:
    """Validate every object in the given files/folders. ClusterStorageContainers anywhere in the
    inputs count for every InferenceService's storage URI check, as they would in the cluster."""
    report, docs = Report(), []
    for file in expand_paths(paths):
        try:
            docs += load_file(file)
        except YamlLoadError as exc:
            report.findings.append(Finding(ERROR, exc.file, exc.line, (), exc.message, "yaml"))
        except (OSError, UnicodeDecodeError) as exc:
            report.findings.append(Finding(ERROR, file, 1, (), f"cannot read: {exc}", "io"))
    plain = [(doc, to_plain(doc.data)) for doc in docs]
    formats = [
        f
        for _, obj in plain
        if isinstance(obj, dict) and obj.get("kind") == isvc.CSC_KIND
        for f in storage_uris.uri_formats(obj)
    ]
    served_by = runtimes.runtimes_in(obj for _, obj in plain)
    for doc, obj in plain:
        issues = check_object(obj, crds, formats, default_mode, lint, report, doc)
        if isinstance(obj, dict) and obj.get("kind") == isvc.ISVC_KIND:
            issues += runtimes.check(obj, served_by)
        report.findings += [_place(doc, i) for i in issues]
    report.findings.sort(key=lambda f: (str(f.file), f.line, f.severity))
    return report


def check_object(
    obj: Any,
    crds: CrdSet,
    formats: list[dict[str, str]],
    default_mode: str,
    lint: bool,
    report: Report,
    doc: Document,
) -> list[Issue]:
    if not isinstance(obj, dict):
        return [error((), "a Kubernetes object must be a mapping", "schema")]
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not api_version or not kind:
        return [error((), "apiVersion and kind are required", "schema")]
    crd = crds.lookup(str(api_version), str(kind))
    if crd is None:
        served = crds.served_versions(str(api_version), str(kind))
        if served:
            return [
                error(
                    ("apiVersion",),
                    f"{kind} is not served as {api_version}; served: {', '.join(served)}",
                    "schema",
                )
            ]
        report.skipped.append(f"{doc.file}: {doc.label} (no CRD for {api_version} {kind})")
        return []
    report.checked.append(f"{doc.file}: {doc.label}")
    issues = schema.check(crd.schema, obj)
    if kind == isvc.ISVC_KIND:
        issues += webhook_rules.check(obj, formats, default_mode)
        issues += settings_rules.check(obj)
        issues += lint_rules.check(obj, default_mode)
    return issues if lint else [i for i in issues if not i.rule.startswith("lint/")]


def _place(doc: Document, issue: Issue) -> Finding:
    return Finding(
        issue.severity,
        doc.file,
        doc.line_of(issue.path),
        issue.path,
        issue.message,
        issue.rule,
        doc.label,
    )
