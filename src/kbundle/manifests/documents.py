"""YAML documents with their positions: every finding names a file and a line.

ruamel.yaml's round-trip loader keeps each mapping key's and sequence item's line, counted over
the whole stream, so multi-document files need no offset bookkeeping.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from kbundle.manifests.yamlguard import MAX_BYTES, YamlLimitError, check_text

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Document:
    """One YAML document: `data` is ruamel's round-trip tree (CommentedMap for objects)."""

    file: Path
    index: int
    data: Any
    start_line: int  # 1-based line of the document's first node

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", "")) if isinstance(self.data, dict) else ""

    @property
    def api_version(self) -> str:
        return str(self.data.get("apiVersion", "")) if isinstance(self.data, dict) else ""

    @property
    def name(self) -> str:
        meta = self.data.get("metadata") if isinstance(self.data, dict) else None
        return str(meta.get("name", "")) if isinstance(meta, dict) else ""

    @property
    def label(self) -> str:
        return f"{self.kind or '?'}/{self.name or '?'}"

    def line_of(self, path: Iterable[str | int]) -> int:
        return line_of(self.data, path, self.start_line)


class YamlLoadError(Exception):
    """A file that is not YAML; carries the 1-based line of the problem."""

    def __init__(self, file: Path, line: int, message: str):
        super().__init__(f"{file}:{line}: {message}")
        self.file, self.line, self.message = file, line, message


def round_trip_yaml() -> YAML:
    """ruamel's round-trip loader reading YAML 1.1 scalars, as kubectl's YAML decoder does:
    unquoted yes/no/on/off are booleans there, which is a classic cause of rejected manifests."""
    yaml = YAML(typ="rt")
    yaml.version = (1, 1)
    yaml.preserve_quotes = True
    return yaml


def load_text(file: Path, text: str) -> list[Document]:
    """All non-empty documents of `text`; YamlLoadError with a line on malformed or hostile YAML
    (the limits of `yamlguard` are checked before ruamel builds anything)."""
    try:
        check_text(text)
        raw = list(round_trip_yaml().load_all(text))
    except YamlLimitError as exc:
        raise YamlLoadError(file, exc.line, exc.message) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlLoadError(file, line, f"not valid YAML: {exc.problem or exc}") from exc
    except (YAMLError, ValueError, RecursionError) as exc:
        raise YamlLoadError(file, 1, f"not valid YAML: {exc}") from exc
    docs = []
    for index, data in enumerate(raw):
        if data is None:
            continue
        start = data.lc.line + 1 if isinstance(data, CommentedMap | CommentedSeq) else 1
        docs.append(Document(file, index, data, start))
    return docs


def read_bounded(file: Path) -> bytes:
    """A file's bytes, never more than MAX_BYTES read even from a pipe or a device; YamlLoadError
    past it (OSError when it cannot be read)."""
    with open(file, "rb") as stream:
        raw = stream.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise YamlLoadError(
            file, 1, f"file is over {MAX_BYTES} bytes; manifests are limited to that"
        )
    return raw


def load_file(file: Path) -> list[Document]:
    """The documents of one file; YamlLoadError for an oversized, non-UTF-8 or bad YAML file
    (OSError when it cannot be read). The size is checked before the file is read."""
    file = Path(file)
    with open(file, "rb") as stream:  # never more than the limit, even from a pipe or a device
        raw = stream.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise YamlLoadError(
            file, 1, f"file is over {MAX_BYTES} bytes; manifests are limited to that"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlLoadError(file, 1, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    return load_text(file, text)


def expand_paths(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Files as given, folders walked recursively for *.yaml / *.yml in sorted order."""
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(
                p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file()
            )
        else:
            yield path


def line_of(data: Any, path: Iterable[str | int], default: int = 1) -> int:
    """1-based line of the deepest node of `path` that exists (the parent for a missing field)."""
    line, node = default, data
    for part in path:
        if isinstance(node, CommentedMap) and part in node:
            line = node.lc.key(part)[0] + 1
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line = node.lc.item(part)[0] + 1
        else:
            break
        node = node[part]
    return line


def get_path(data: Any, path: Iterable[str | int], default: Any = None) -> Any:
    node = data
    for part in path:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return default
    return node


def to_plain(node: Any) -> Any:
    """ruamel's tree as plain JSON-like values (what the API server would decode)."""
    if isinstance(node, dict):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, datetime.date | datetime.datetime):
        return node.isoformat()
    return str(node)
