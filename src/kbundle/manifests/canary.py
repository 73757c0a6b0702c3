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

from kbundle.manifests import isvc, storage_uris, textedit
from kbundle.manifests.documents import Document, YamlLoadError, get_path, load_text, to_plain
from kbundle.manifests.findings import format_path
from kbundle.manifests.textedit import EditError

Path_ = tuple[str | int, ...]
PERCENT_KEY = "canaryTrafficPercent"
PREDICTOR = ("spec", "predictor")
DEFAULT_CANARY_NAME = "canary"


class CanaryError(Exception):
    """The edit is refused; the message says why and what to do."""


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


@dataclass
class _Ctx:
    file: Path
    doc_index: int
    touched: list[Path_] = field(default_factory=list)
    expected: dict[Path_, Any] = field(default_factory=dict)


# ---- locating ---------------------------------------------------------------------------


def _parse(text: str, file: Path) -> list[Document]:
    try:
        return load_text(file, text)
    except YamlLoadError as exc:
        raise CanaryError(str(exc)) from exc


def select_target(docs: list[Document], file: Path, name: str | None) -> Document:
    """The InferenceService to edit: the one named `name`, or the only one in the file."""
    targets = [d for d in docs if d.kind == isvc.ISVC_KIND]
    if not targets:
        found = ", ".join(d.label for d in docs) or "nothing"
        raise CanaryError(f"{file}: no InferenceService to edit (found: {found})")
    if name is not None:
        named = [d for d in targets if d.name == name]
        if not named:
            raise CanaryError(
                f"{file}: no InferenceService named {name!r} (found: "
                f"{', '.join(d.name for d in targets)})"
            )
        return named[0]
    if len(targets) > 1:
        raise CanaryError(
            f"{file}: {len(targets)} InferenceServices ({', '.join(d.name for d in targets)}); "
            "choose one with --name"
        )
    return targets[0]


def _doc(text: str, ctx: _Ctx) -> tuple[list[str], Document]:
    docs = [d for d in _parse(text, ctx.file) if d.index == ctx.doc_index]
    return textedit.split_lines(text), docs[0]


def _map(doc: Document, path: Path_) -> Any:
    node = get_path(doc.data, path)
    if not isinstance(node, dict):
        raise CanaryError(f"{doc.label}: {format_path(path)} is missing or not a mapping")
    if node.fa.flow_style():
        raise CanaryError(
            f"{doc.label}: {format_path(path)} is written in flow style {{...}}; "
            "use block style to let kbundle edit it"
        )
    return node


# ---- primitive steps --------------------------------------------------------------------


def _set_scalar(
    text: str, ctx: _Ctx, path: Path_, key: str | int, value: str | int, insert: bool
) -> str:
    """Set node[key] = value keeping the token's quoting; insert `key: value` when absent."""
    lines, doc = _doc(text, ctx)
    node = get_path(doc.data, path)
    ctx.touched.append((*path, key))
    ctx.expected[(*path, key)] = value
    if isinstance(node, dict | list) and (
        key in node if isinstance(node, dict) else 0 <= key < len(node)
    ):
        span = textedit.value_span(lines, node, key)
        old = textedit.body(lines[span.line])[span.start : span.end]
        textedit.replace_span(lines, span, textedit.render_like(old, value))
        return "".join(lines)
    if not insert:
        raise CanaryError(f"{doc.label}: {format_path((*path, key))} not found")
    node = _map(doc, path)
    first = next(iter(node))
    key_line = doc.data.lc.line if not path else _key_line(doc, path)
    indent = node.lc.key(first)[1]
    brk = textedit.line_break(lines[key_line])
    lines.insert(key_line + 1, " " * indent + f"{key}: {textedit.render_like('', value)}{brk}")
    return "".join(lines)


def _key_line(doc: Document, path: Path_) -> int:
    parent = get_path(doc.data, path[:-1])
    if isinstance(parent, dict):
        return parent.lc.key(path[-1])[0]
    return parent.lc.item(path[-1])[0]


def _delete_key(text: str, ctx: _Ctx, path: Path_, key: str) -> str:
    """Remove `key:` and its whole block from the mapping at `path`."""
    lines, doc = _doc(text, ctx)
    node = _map(doc, path)
    if key not in node:
        return text
    line, col = node.lc.key(key)
    if textedit.body(lines[line])[:col].strip():
        raise CanaryError(
            f"{doc.label}: line {line + 1}: {key} shares its line with a list dash; "
            "move it down one line to let kbundle remove it"
        )
    ctx.touched.append((*path, key))
    del lines[line : textedit.block_end(lines, line, col)]
    return "".join(lines)


def _delete_item(text: str, ctx: _Ctx, path: Path_, index: int) -> str:
    """Remove item `index` of the block sequence at `path` (the whole key when it is the last)."""
    lines, doc = _doc(text, ctx)
    seq = get_path(doc.data, path)
    ctx.touched.append(path)
    if len(seq) == 1:
        return _delete_key(text, ctx, path[:-1], path[-1])
    line, col = seq.lc.item(index)
    dash = textedit.body(lines[line]).rfind("-", 0, col)
    if dash < 0 or textedit.body(lines[line])[:dash].strip():
        raise CanaryError(
            f"{doc.label}: line {line + 1}: cannot find the list dash of {format_path(path)}[{index}]"
        )
    del lines[line : textedit.block_end(lines, line, dash)]
    return "".join(lines)


# ---- where a predictor keeps its model and image ----------------------------------------


def _storage_location(doc: Document, pred_path: Path_) -> tuple[Path_, str | int]:
    """(parent path, key) of the predictor's single storage URI: kserve-container STORAGE_URI
    env, else the framework's storageUri."""
    pred = get_path(doc.data, pred_path)
    if pred.get("storageUris"):
        raise CanaryError(
            f"{doc.label}: {format_path(pred_path)} uses storageUris[]; edit those by hand"
        )
    main = isvc.main_container(pred, pred_path)
    if main is not None and "containers" in main[0]:
        found = isvc.env_value(main[1], storage_uris.STORAGE_URI_ENV)
        if found is not None:
            return (*main[0], "env", found[0]), "value"
    for key in isvc.FRAMEWORKS:
        if isinstance(pred.get(key), dict) and "storageUri" in pred[key]:
            return (*pred_path, key), "storageUri"
    raise CanaryError(
        f"{doc.label}: {format_path(pred_path)} declares no storage URI (env STORAGE_URI "
        "of kserve-container or model.storageUri) to replace"
    )


def _image_location(doc: Document, pred_path: Path_) -> tuple[Path_, str]:
    pred = get_path(doc.data, pred_path)
    main = isvc.main_container(pred, pred_path)
    if main is None or "image" not in main[1]:
        raise CanaryError(
            f"{doc.label}: {format_path(pred_path)} has no container image to replace"
        )
    return main[0], "image"


def _set_storage(text: str, ctx: _Ctx, pred_path: Path_, uri: str) -> str:
    _, doc = _doc(text, ctx)
    parent, key = _storage_location(doc, pred_path)
    return _set_scalar(text, ctx, parent, key, uri, insert=False)


def _set_image(text: str, ctx: _Ctx, pred_path: Path_, image: str) -> str:
    _, doc = _doc(text, ctx)
    parent, key = _image_location(doc, pred_path)
    return _set_scalar(text, ctx, parent, key, image, insert=False)


# ---- Standard mode: spec.canary[] ------------------------------------------------------


def _canary_index(doc: Document, canary_name: str | None) -> int | None:
    items = get_path(doc.data, ("spec", "canary")) or []
    names = [get_path(item, ("predictor", "name")) for item in items]
    if canary_name is not None:
        return names.index(canary_name) if canary_name in names else None
    if len(items) > 1:
        raise CanaryError(
            f"{doc.label}: spec.canary[] has {len(items)} entries ({', '.join(map(str, names))}); "
            "choose one with --canary-name"
        )
    return 0 if items else None


def _create_canary(text: str, ctx: _Ctx, name: str, percent: int) -> str:
    """Append a spec.canary[] entry that starts as a copy of spec.predictor's text (comments
    included) under `name`; autoscaling fields are removed afterwards."""
    lines, doc = _doc(text, ctx)
    spec = _map(doc, ("spec",))
    if "canary" in spec:
        raise CanaryError(
            f"{doc.label}: spec.canary exists but has no usable entry; edit it by hand"
        )
    pred = _map(doc, PREDICTOR)
    key_line, key_col = spec.lc.key("predictor")
    child = pred.lc.key(next(iter(pred)))[1]
    step = child - key_col
    end = textedit.block_end(lines, key_line, key_col)
    brk = textedit.line_break(lines[key_line])
    new_child = key_col + step + 2 + step
    head = [
        f"{' ' * key_col}canary:{brk}",
        f"{' ' * (key_col + step)}- trafficPercent: {percent}{brk}",
        f"{' ' * (key_col + step + 2)}predictor:{brk}",
        f"{' ' * new_child}name: {name}{brk}",
    ]
    copied = [_shift(line, new_child - child) for line in lines[key_line + 1 : end]]
    ctx.touched.append(("spec", "canary"))
    return "".join(lines[:end] + head + copied + lines[end:])


def _shift(line: str, delta: int) -> str:
    if not textedit.body(line).strip():
        return line
    if delta >= 0:
        return " " * delta + line
    return line[min(-delta, textedit.indent_of(line)) :]


# ---- operations ---------------------------------------------------------------------------

Step = Callable[[str, _Ctx], str]


def _run(
    file: Path,
    text: str,
    name: str | None,
    default_mode: str,
    build: Callable[[Document, str], list[Step]],
) -> Plan:
    doc = select_target(_parse(text, file), file, name)
    mode = isvc.deployment_mode(to_plain(doc.data), default_mode)
    if mode == isvc.MODELMESH:
        raise CanaryError(f"{doc.label}: ModelMesh mode has no canary rollout")
    ctx = _Ctx(file, doc.index)
    new, notes = text, []
    for step in build(doc, mode):
        try:
            new = step(new, ctx) if not isinstance(step, str) else new
        except EditError as exc:
            raise CanaryError(f"{file}: {exc}") from exc
        if isinstance(step, str):
            notes.append(step)
    _verify(file, text, new, ctx)
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

    def build(doc: Document, mode: str) -> list[Step]:
        if mode == isvc.KNATIVE:
            steps: list[Step] = []
            if storage_uri:
                steps.append(lambda t, c: _set_storage(t, c, PREDICTOR, storage_uri))
            if image:
                steps.append(lambda t, c: _set_image(t, c, PREDICTOR, image))
            steps.append(
                lambda t, c: _set_scalar(t, c, PREDICTOR, PERCENT_KEY, percent, insert=True)
            )
            return steps
        return _standard_set(doc, percent, storage_uri, image, canary_name)

    return _run(file, text, name, default_mode, build)


def _standard_set(
    doc: Document, percent: int, storage_uri: str | None, image: str | None, canary_name: str | None
) -> list[Step]:
    index = _canary_index(doc, canary_name)
    steps: list[Step] = []
    if index is None:
        if not (storage_uri or image):
            raise CanaryError(
                f"{doc.label}: no spec.canary[] entry yet; give --storage-uri and/or --image "
                "for the new one"
            )
        new_name = canary_name or DEFAULT_CANARY_NAME
        steps.append(lambda t, c: _create_canary(t, c, new_name, percent))
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
            steps.append(lambda t, c, k=key: _delete_key(t, c, cpath, k))
    cpath = ("spec", "canary", index, "predictor")
    if storage_uri:
        steps.append(lambda t, c: _set_storage(t, c, cpath, storage_uri))
    if image:
        steps.append(lambda t, c: _set_image(t, c, cpath, image))
    steps.append(
        lambda t, c: _set_scalar(
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

    def build(doc: Document, mode: str) -> list[Step]:
        if mode == isvc.KNATIVE:
            if PERCENT_KEY not in (get_path(doc.data, PREDICTOR) or {}):
                return [
                    "no canaryTrafficPercent: the predictor already takes 100% (nothing to promote)"
                ]
            return [lambda t, c: _delete_key(t, c, PREDICTOR, PERCENT_KEY)]
        index = _canary_index(doc, canary_name)
        if index is None:
            raise CanaryError(f"{doc.label}: no spec.canary[] entry to promote")
        cpath = ("spec", "canary", index, "predictor")
        steps: list[Step] = []
        with_storage = _has_location(_storage_location, doc, cpath)
        if with_storage:
            uri = str(_value_at(doc, *_storage_location(doc, cpath)))
            steps.append(lambda t, c: _set_storage(t, c, PREDICTOR, uri))
        if _has_location(_image_location, doc, cpath):
            image = str(_value_at(doc, *_image_location(doc, cpath)))
            steps.append(lambda t, c: _set_image(t, c, PREDICTOR, image))
        steps.append(lambda t, c: _delete_item(t, c, ("spec", "canary"), index))
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

    def build(doc: Document, mode: str) -> list[Step]:
        if mode == isvc.KNATIVE:
            return [lambda t, c: _set_scalar(t, c, PREDICTOR, PERCENT_KEY, 0, insert=True)]
        index = _canary_index(doc, canary_name)
        if index is None:
            raise CanaryError(f"{doc.label}: no spec.canary[] entry to roll back")
        return [
            lambda t, c: _set_scalar(
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


# ---- verification -------------------------------------------------------------------------


def _verify(file: Path, old: str, new: str, ctx: _Ctx) -> None:
    """Re-parse the result: other documents identical, and in the target only touched fields differ."""
    before = {d.index: to_plain(d.data) for d in _parse(old, file)}
    try:
        after = {d.index: to_plain(d.data) for d in _parse(new, file)}
    except CanaryError as exc:
        raise CanaryError(
            f"internal error: the edited text does not parse ({exc}); file left unchanged"
        ) from exc
    if before.keys() != after.keys():
        raise CanaryError(
            "internal error: the edit changed the number of documents; file left unchanged"
        )
    for index in before:
        changed = _diff_paths(before[index], after[index])
        allowed = ctx.touched if index == ctx.doc_index else []
        stray = [p for p in changed if not any(p[: len(a)] == a for a in allowed)]
        if stray:
            raise CanaryError(
                f"internal error: the edit would also change {format_path(stray[0])}; "
                "file left unchanged"
            )


def _diff_paths(a: Any, b: Any, path: Path_ = ()) -> list[Path_]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[Path_] = []
        for key in set(a) | set(b):
            out += _diff_paths(a.get(key, _MISSING), b.get(key, _MISSING), (*path, key))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            p
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for p in _diff_paths(x, y, (*path, i))
        ]
    return [] if a == b else [path]


_MISSING = object()
