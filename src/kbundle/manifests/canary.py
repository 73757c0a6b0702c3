"""Canary edits on an InferenceService manifest: set, promote, roll back.

Knative (Serverless) mode: `spec.predictor.canaryTrafficPercent` (KServe splits traffic between
the new revision and the last rolled-out one; promotion removes the field, rollback sets 0).
Standard (RawDeployment) mode ignores that field, so the edits go to `spec.canary[]` instead.

Every edit is a short sequence of steps; each step re-parses the current text, finds its place
through ruamel's positions and changes only those bytes (`textedit`). Afterwards the result is
parsed again and compared with the original: anything changed outside the intended fields
aborts the edit, so a surprise in the YAML can never silently corrupt a manifest.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbundle.manifests import isvc, storage_uris
from kbundle.manifests.canary_steps import (
    DEFAULT_CANARY_NAME,
    PERCENT_KEY,
    PREDICTOR,
    CanaryError,
    EditCtx,
    Path_,
    canary_index,
    create_canary,
    delete_item,
    delete_key,
    image_location,
    parse_docs,
    select_target,
    set_image,
    set_scalar,
    set_storage,
    storage_location,
    verify,
)
from kbundle.manifests.documents import Document, get_path, to_plain
from kbundle.manifests.textedit import EditError

__all__ = ["CanaryError", "Plan", "promote", "rollback", "set_canary"]


@dataclass
class Plan:
    """The result of an edit, not yet written: `new` is the whole new file text."""

    file: Path
    old: str
    new: str
    target: str
    mode: str
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def diff(self) -> str:
        return "".join(
            difflib.unified_diff(
                self.old.splitlines(keepends=True),
                self.new.splitlines(keepends=True),
                fromfile=f"{self.file} (current)",
                tofile=f"{self.file} (edited)",
            )
        )


# ---- operations ---------------------------------------------------------------------------

Step = Callable[[str, EditCtx], str]
# What an operation plans: text-editing steps, and plain strings that are notes for the user.
Action = Step | str


def _run(
    file: Path,
    text: str,
    name: str | None,
    default_mode: str,
    build: Callable[[Document, str], list[Action]],
) -> Plan:
    doc = select_target(parse_docs(text, file), file, name)
    mode = isvc.deployment_mode(to_plain(doc.data), default_mode)
    if mode == isvc.MODELMESH:
        raise CanaryError(f"{doc.label}: ModelMesh mode has no canary rollout")
    ctx = EditCtx(file, doc.index)
    new, notes = text, []
    for action in build(doc, mode):
        if isinstance(action, str):
            notes.append(action)
            continue
        try:
            new = action(new, ctx)
        except EditError as exc:
            raise CanaryError(f"{file}: {exc}") from exc
    verify(file, text, new, ctx)
    return Plan(file, text, new, doc.label, mode, notes)


def set_canary(
    file: Path,
    text: str,
    percent: int,
    storage_uri: str | None = None,
    image: str | None = None,
    name: str | None = None,
    canary_name: str | None = None,
    default_mode: str = isvc.KNATIVE,
) -> Plan:
    """Route `percent`% of traffic to the candidate (optionally changing its model/image first)."""
    _check_percent(percent)

    def build(doc: Document, mode: str) -> list[Action]:
        if mode == isvc.KNATIVE:
            steps: list[Action] = []
            if storage_uri:
                steps.append(lambda t, c: set_storage(t, c, PREDICTOR, storage_uri))
            if image:
                steps.append(lambda t, c: set_image(t, c, PREDICTOR, image))
            steps.append(
                lambda t, c: set_scalar(t, c, PREDICTOR, PERCENT_KEY, percent, insert=True)
            )
            return steps
        return _standard_set(doc, percent, storage_uri, image, canary_name)

    return _run(file, text, name, default_mode, build)


def _standard_set(
    doc: Document, percent: int, storage_uri: str | None, image: str | None, canary_name: str | None
) -> list[Action]:
    index = canary_index(doc, canary_name)
    steps: list[Action] = []
    if index is None:
        if not (storage_uri or image):
            raise CanaryError(
                f"{doc.label}: no spec.canary[] entry yet; give --storage-uri and/or --image "
                "for the new one"
            )
        new_name = canary_name or DEFAULT_CANARY_NAME
        steps.append(lambda t, c: create_canary(t, c, new_name, percent))
        index = 0
        cpath: Path_ = ("spec", "canary", 0, "predictor")
        for key in (
            "maxReplicas",
            "scaleMetric",
            "scaleMetricType",
            "scaleTarget",
            "autoScaling",
            PERCENT_KEY,
        ):
            steps.append(lambda t, c, k=key: delete_key(t, c, cpath, k))
    cpath = ("spec", "canary", index, "predictor")
    if storage_uri:
        steps.append(lambda t, c: set_storage(t, c, cpath, storage_uri))
    if image:
        steps.append(lambda t, c: set_image(t, c, cpath, image))
    steps.append(
        lambda t, c: set_scalar(
            t, c, ("spec", "canary", index), "trafficPercent", percent, insert=False
        )
    )
    return steps


def promote(
    file: Path,
    text: str,
    name: str | None = None,
    canary_name: str | None = None,
    default_mode: str = isvc.KNATIVE,
) -> Plan:
    """Knative: remove canaryTrafficPercent (the latest revision takes 100%). Standard: the stable
    predictor takes the canary's storage URI and image, and the canary entry is removed."""

    def build(doc: Document, mode: str) -> list[Action]:
        if mode == isvc.KNATIVE:
            if PERCENT_KEY not in (get_path(doc.data, PREDICTOR) or {}):
                return [
                    "no canaryTrafficPercent: the predictor already takes 100% (nothing to promote)"
                ]
            return [lambda t, c: delete_key(t, c, PREDICTOR, PERCENT_KEY)]
        index = canary_index(doc, canary_name)
        if index is None:
            raise CanaryError(f"{doc.label}: no spec.canary[] entry to promote")
        cpath = ("spec", "canary", index, "predictor")
        steps: list[Action] = []
        with_storage = _has_location(storage_location, doc, cpath)
        if with_storage:
            uri = str(_value_at(doc, *storage_location(doc, cpath)))
            steps.append(lambda t, c: set_storage(t, c, PREDICTOR, uri))
        if _has_location(image_location, doc, cpath):
            image = str(_value_at(doc, *image_location(doc, cpath)))
            steps.append(lambda t, c: set_image(t, c, PREDICTOR, image))
        steps.append(lambda t, c: delete_item(t, c, ("spec", "canary"), index))
        leftovers = _other_differences(doc, cpath)
        if leftovers:
            steps.append(
                f"not promoted (differ between canary and predictor, edit by hand if wanted): "
                f"{', '.join(leftovers)}"
            )
        return steps

    return _run(file, text, name, default_mode, build)


def rollback(
    file: Path,
    text: str,
    name: str | None = None,
    canary_name: str | None = None,
    default_mode: str = isvc.KNATIVE,
) -> Plan:
    """Send 0% to the candidate: Knative pins traffic to the last rolled-out revision."""

    def build(doc: Document, mode: str) -> list[Action]:
        if mode == isvc.KNATIVE:
            if PERCENT_KEY not in (get_path(doc.data, PREDICTOR) or {}):
                raise CanaryError(
                    f"{doc.label}: no canary to roll back (no canaryTrafficPercent: the latest "
                    "revision takes all traffic); to pin the previous revision use "
                    "`kbundle canary set --percent 0`"
                )
            return [lambda t, c: set_scalar(t, c, PREDICTOR, PERCENT_KEY, 0, insert=True)]
        index = canary_index(doc, canary_name)
        if index is None:
            raise CanaryError(f"{doc.label}: no spec.canary[] entry to roll back")
        return [
            lambda t, c: set_scalar(
                t, c, ("spec", "canary", index), "trafficPercent", 0, insert=False
            )
        ]

    return _run(file, text, name, default_mode, build)


def _check_percent(percent: int) -> None:
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise CanaryError(f"--percent must be an integer from 0 to 100, got {percent!r}")


def _has_location(finder: Callable[..., Any], doc: Document, path: Path_) -> bool:
    try:
        finder(doc, path)
    except CanaryError:
        return False
    return True


def _value_at(doc: Document, parent: Path_, key: str | int) -> Any:
    return get_path(doc.data, (*parent, key))


def _other_differences(doc: Document, cpath: Path_) -> list[str]:
    """Top-level predictor fields that differ apart from name, replicas, storage URI and image."""
    canary = to_plain(get_path(doc.data, cpath))
    stable = to_plain(get_path(doc.data, PREDICTOR))
    skip = {
        "name",
        "minReplicas",
        "maxReplicas",
        "scaleMetric",
        "scaleMetricType",
        "scaleTarget",
        "autoScaling",
        PERCENT_KEY,
        "containers",
        *isvc.FRAMEWORKS,
    }
    out = [
        k
        for k in sorted(set(canary) | set(stable))
        if k not in skip and canary.get(k) != stable.get(k)
    ]
    for key in ("containers", *isvc.FRAMEWORKS):
        if _normalised(canary.get(key)) != _normalised(stable.get(key)):
            out.append(key)
    return out


def _normalised(node: Any) -> Any:
    """A container list/framework with image and storage URI blanked (those are promoted)."""
    if isinstance(node, list):
        return [_normalised(item) for item in node]
    if isinstance(node, dict):
        out = {k: v for k, v in node.items() if k not in ("image", "storageUri")}
        if isinstance(out.get("env"), list):
            out["env"] = [e for e in out["env"] if e.get("name") != storage_uris.STORAGE_URI_ENV]
        return out
    return node
