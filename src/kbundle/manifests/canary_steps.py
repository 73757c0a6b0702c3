"""The building blocks of a canary edit: find the InferenceService, locate a field through
ruamel's positions, change exactly those bytes (`textedit`), and verify the result.

Each step takes the whole text and returns the new text; it re-parses first, so positions are
always fresh. `verify` re-reads the result and refuses any change outside the touched fields.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kbundle.manifests import isvc, storage_uris, textedit
from kbundle.manifests.documents import Document, YamlLoadError, get_path, load_text, to_plain
from kbundle.manifests.findings import format_path

Path_ = tuple[str | int, ...]
PERCENT_KEY = "canaryTrafficPercent"
PREDICTOR = ("spec", "predictor")
DEFAULT_CANARY_NAME = "canary"


class CanaryError(Exception):
    """The edit is refused; the message says why and what to do."""


@dataclass
class EditCtx:
    """Where the edit happens and what it touched (the verification allows only those)."""

    file: Path
    doc_index: int
    touched: list[Path_] = field(default_factory=list)
    expected: dict[Path_, Any] = field(default_factory=dict)


# ---- locating ---------------------------------------------------------------------------


def parse_docs(text: str, file: Path) -> list[Document]:
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


def doc_at(text: str, ctx: EditCtx) -> tuple[list[str], Document]:
    try:
        parsed = parse_docs(text, ctx.file)
    except CanaryError as exc:  # the file itself parsed: this is what an earlier step made
        raise CanaryError(
            f"internal error: the edited text does not parse ({exc}); file left unchanged"
        ) from exc
    docs = [d for d in parsed if d.index == ctx.doc_index]
    return textedit.split_lines(text), docs[0]


def block_map(doc: Document, path: Path_) -> Any:
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


def set_scalar(
    text: str, ctx: EditCtx, path: Path_, key: str | int, value: str | int, insert: bool
) -> str:
    """Set node[key] = value keeping the token's quoting; insert `key: value` when absent."""
    lines, doc = doc_at(text, ctx)
    node = get_path(doc.data, path)
    ctx.touched.append((*path, key))
    ctx.expected[(*path, key)] = value
    if isinstance(node, dict | list) and (
        key in node if isinstance(node, dict) else 0 <= key < len(node)
    ):
        _refuse_anchor(doc, (*path, key), node[key])
        span = textedit.value_span(lines, node, key)
        old = textedit.body(lines[span.line])[span.start : span.end]
        textedit.replace_span(lines, span, textedit.render_like(old, value))
        return "".join(lines)
    if not insert:
        raise CanaryError(f"{doc.label}: {format_path((*path, key))} not found")
    node = block_map(doc, path)
    first = next(iter(node))
    key_line = doc.data.lc.line if not path else _key_line(doc, path)
    indent = node.lc.key(first)[1]
    brk = textedit.line_break(lines[key_line])
    lines.insert(key_line + 1, " " * indent + f"{key}: {textedit.render_like('', value)}{brk}")
    return "".join(lines)


def _refuse_anchor(doc: Document, path: Path_, value: Any) -> None:
    """A value that is a YAML anchor (&name) or an alias (*name) is shared with other places:
    editing it here would change those too (or leave an alias pointing nowhere)."""
    anchor = getattr(getattr(value, "anchor", None), "value", None)
    if anchor:
        raise CanaryError(
            f"{doc.label}: {format_path(path)} is the YAML anchor &{anchor} (or an alias of it), "
            "shared with other fields; write the value out in place of the anchor to let kbundle "
            "edit it"
        )


def _key_line(doc: Document, path: Path_) -> int:
    parent = get_path(doc.data, path[:-1])
    if isinstance(parent, dict):
        return parent.lc.key(path[-1])[0]
    return parent.lc.item(path[-1])[0]


def delete_key(text: str, ctx: EditCtx, path: Path_, key: str) -> str:
    """Remove `key:` and its whole block from the mapping at `path`."""
    lines, doc = doc_at(text, ctx)
    node = block_map(doc, path)
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


def delete_item(text: str, ctx: EditCtx, path: Path_, index: int) -> str:
    """Remove item `index` of the block sequence at `path` (the whole key when it is the last)."""
    lines, doc = doc_at(text, ctx)
    seq = get_path(doc.data, path)
    ctx.touched.append(path)
    if len(seq) == 1:
        return delete_key(text, ctx, path[:-1], path[-1])
    line, col = seq.lc.item(index)
    dash = textedit.body(lines[line]).rfind("-", 0, col)
    if dash < 0 or textedit.body(lines[line])[:dash].strip():
        raise CanaryError(
            f"{doc.label}: line {line + 1}: cannot find the list dash of {format_path(path)}[{index}]"
        )
    del lines[line : textedit.block_end(lines, line, dash)]
    return "".join(lines)


# ---- where a predictor keeps its model and image ----------------------------------------


def storage_location(doc: Document, pred_path: Path_) -> tuple[Path_, str | int]:
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


def image_location(doc: Document, pred_path: Path_) -> tuple[Path_, str]:
    pred = get_path(doc.data, pred_path)
    main = isvc.main_container(pred, pred_path)
    if main is None or "image" not in main[1]:
        raise CanaryError(
            f"{doc.label}: {format_path(pred_path)} has no container image to replace"
        )
    return main[0], "image"


def set_storage(text: str, ctx: EditCtx, pred_path: Path_, uri: str) -> str:
    _, doc = doc_at(text, ctx)
    parent, key = storage_location(doc, pred_path)
    return set_scalar(text, ctx, parent, key, uri, insert=False)


def set_image(text: str, ctx: EditCtx, pred_path: Path_, image: str) -> str:
    _, doc = doc_at(text, ctx)
    parent, key = image_location(doc, pred_path)
    return set_scalar(text, ctx, parent, key, image, insert=False)


# ---- Standard mode: spec.canary[] ------------------------------------------------------


def canary_index(doc: Document, canary_name: str | None) -> int | None:
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


def create_canary(text: str, ctx: EditCtx, name: str, percent: int) -> str:
    """Append a spec.canary[] entry that starts as a copy of spec.predictor's text (comments
    included) under `name`; autoscaling fields are removed afterwards."""
    lines, doc = doc_at(text, ctx)
    spec = block_map(doc, ("spec",))
    if "canary" in spec:
        raise CanaryError(
            f"{doc.label}: spec.canary exists but has no usable entry; edit it by hand"
        )
    pred = block_map(doc, PREDICTOR)
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


# ---- verification -------------------------------------------------------------------------


def verify(file: Path, old: str, new: str, ctx: EditCtx) -> None:
    """Re-parse the result: other documents identical, and in the target only touched fields differ."""
    before = {d.index: to_plain(d.data) for d in parse_docs(old, file)}
    try:
        after = {d.index: to_plain(d.data) for d in parse_docs(new, file)}
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
    for path, value in ctx.expected.items():
        got = get_path(after[ctx.doc_index], path, _MISSING)
        if got != value:
            raise CanaryError(
                f"internal error: {format_path(path)} reads back as {got!r}, not {value!r}; "
                "file left unchanged"
            )
    _check_line_diff(old, new)


def _check_line_diff(old: str, new: str) -> None:
    """Text-level check: a line that was replaced (not inserted or deleted) keeps everything up to
    its key, so only values changed; every other line is equal by construction of the diff."""
    a, b = textedit.split_lines(old), textedit.split_lines(new)
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        if tag != "replace" or i2 - i1 != j2 - j1:
            continue
        for before, after in zip(a[i1:i2], b[j1:j2], strict=True):
            if _key_part(before) != _key_part(after) or textedit.line_break(
                before
            ) != textedit.line_break(after):
                raise CanaryError(
                    f"internal error: the edit would rewrite {before.strip()!r}; file left unchanged"
                )


def _key_part(line: str) -> str:
    text = textedit.body(line)
    colon = text.find(":")
    return text[: colon + 1] if colon >= 0 else text


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
