"""Byte-exact line edits guided by ruamel's line/column info.

Round-tripping a whole file through ruamel re-flows some lines (indentation of sequences, flow
collections, long strings), so the canary editor never dumps: it changes only the tokens and
lines it means to change and leaves every other byte as it was.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ruamel.yaml.comments import CommentedMap, CommentedSeq

# YAML line breaks as ruamel counts them (so ruamel's line numbers index this list).
_LINE = re.compile(r"[^\r\n\x85\u2028\u2029]*(?:\r\n|[\r\n\x85\u2028\u2029]|\Z)")
_BREAK = re.compile(r"(\r\n|[\r\n\x85\u2028\u2029])\Z")


class EditError(Exception):
    """The file cannot be edited safely at this place (flow style, multi-line value, ...)."""


def split_lines(text: str) -> list[str]:
    lines = _LINE.findall(text)
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def line_break(line: str, default: str = "\n") -> str:
    match = _BREAK.search(line)
    return match.group(1) if match else default


def body(line: str) -> str:
    return _BREAK.sub("", line)


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def is_blank_or_comment(line: str) -> bool:
    stripped = body(line).strip()
    return not stripped or stripped.startswith("#")


@dataclass(frozen=True)
class Span:
    line: int  # 0-based
    start: int
    end: int


def scalar_span(
    lines: list[str], line: int, col: int, flow: bool = False, owner_col: int = 0
) -> Span:
    """Where the scalar token starting at (line, col) ends; refuses multi-line scalars.
    `owner_col` is the column of the value's key (or list item): deeper lines continue it."""
    text = body(lines[line])
    if col >= len(text):
        raise EditError(f"line {line + 1}: the value is not on the key's line")
    first = text[col]
    if first in "|>":
        raise EditError(
            f"line {line + 1}: block scalars (| or >) are not edited; write the value on one line"
        )
    if first in "'\"":
        end = _closing_quote(text, col)
        if end is None:
            raise EditError(f"line {line + 1}: multi-line quoted value; write it on one line")
        return Span(line, col, end)
    stops = [m.start() for m in re.finditer(r"\s#", text[col:])]
    end = col + stops[0] if stops else len(text)
    if flow:
        match = re.search(r"[,\]}]", text[col:end])
        end = col + match.start() if match else end
    end = col + len(text[col:end].rstrip())
    if not flow and _continues(lines, line, owner_col):
        raise EditError(f"line {line + 1}: multi-line plain value; write it on one line")
    return Span(line, col, end)


def _closing_quote(text: str, col: int) -> int | None:
    quote, i = text[col], col + 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            if quote == "'" and i + 1 < len(text) and text[i + 1] == "'":
                i += 2
                continue
            return i + 1
        i += 1
    return None


def _continues(lines: list[str], line: int, col: int) -> bool:
    """A plain scalar continues when the next non-blank line is indented deeper than the key and
    is not itself a key or item (ruamel folds such lines into the value)."""
    key_indent = indent_of(lines[line])
    for nxt in lines[line + 1 :]:
        if is_blank_or_comment(nxt):
            continue
        stripped = body(nxt).strip()
        return indent_of(nxt) > key_indent and not stripped.startswith("- ") and ":" not in stripped
    return False


def render_like(old_token: str, value: str | int) -> str:
    """`value` as YAML in the old token's quoting style; plain only where it stays a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if old_token.startswith("'") and "\n" not in value:
        return "'" + value.replace("'", "''") + "'"
    if old_token.startswith('"') or not _plain_safe(value):
        return json.dumps(value, ensure_ascii=False)
    return value


def _plain_safe(value: str) -> bool:
    from kbundle.manifests.documents import round_trip_yaml

    if (
        not value
        or value != value.strip()
        or re.search(r"[:#]\s|[\[\]{},&*!|>'\"%@`]|^[-?]", value)
    ):
        return False
    try:
        return round_trip_yaml().load(f"k: {value}\n")["k"] == value
    except Exception:  # noqa: BLE001 - anything ruamel rejects is simply not plain-safe
        return False


def value_span(lines: list[str], node: CommentedMap | CommentedSeq, key: str | int) -> Span:
    """The scalar token of node[key] (a mapping value or a sequence item)."""
    if isinstance(node, CommentedMap):
        line, col = node.lc.value(key)
        owner = node.lc.key(key)[1]
    else:
        line, col = node.lc.item(key)
        owner = col
    return scalar_span(lines, line, col, flow=node.fa.flow_style(), owner_col=owner)


def replace_span(lines: list[str], span: Span, new: str) -> None:
    line = lines[span.line]
    lines[span.line] = line[: span.start] + new + line[span.end :]


def block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the last line of the block that starts at `start` (a key or `- ` item at
    `indent`): the block runs until a content line at the same or lower indentation; trailing
    blank lines and comments at that indentation stay outside (they belong to what follows)."""
    end = start + 1
    while end < len(lines):
        line = lines[end]
        if body(line).startswith(("---", "...")):
            break
        if not is_blank_or_comment(line) and indent_of(line) <= indent:
            break
        end += 1
    while (
        end - 1 > start
        and is_blank_or_comment(lines[end - 1])
        and (not body(lines[end - 1]).strip() or indent_of(lines[end - 1]) <= indent)
    ):
        end -= 1
    return end
