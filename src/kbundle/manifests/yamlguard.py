"""Limits a YAML text must keep before anything builds a tree from it (CVE-2019-11253 class).

GitOps pipelines run `kbundle validate` on manifests from pull requests, so a hostile file must
cost bounded time and memory and end in one line, not a traceback or a 15 GB process. One pass of
libyaml's event parser (no tree, no alias expansion) checks, in this order:

- size: at most MAX_BYTES (1 MiB; an object `kubectl apply` can store fits in 256 KiB);
- no NUL character (YAML forbids it; Python's readers fail on it with a traceback);
- nesting depth at most MAX_DEPTH (100; the deepest KServe CRD schema nests 34 levels);
- alias expansion: nodes reached through `*alias` at most MAX_ALIAS_NODES in a document, so a
  "billion laughs" file is refused after a few events;
- plain integers fit 64 bits (the API server's integers are int64; a 5,001-digit integer is
  past Python's int parsing limit and would raise while the tree is built).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml

MAX_BYTES = 1 << 20
MAX_DEPTH = 100
MAX_ALIAS_NODES = 10_000
INT64_DIGITS = 19
_PLAIN_INT = re.compile(r"[-+]?(0|[1-9][0-9_]*)")
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class YamlLimitError(ValueError):
    """A text past one of the limits; `line` is 1-based, `message` one line without the file."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line, self.message = line, message


@dataclass
class _Scan:
    """Per-document state: open collections' node counts, anchored sizes, expanded aliases."""

    stack: list[list] = field(default_factory=list)  # [node count, anchor] per open collection
    sizes: dict[str, int] = field(default_factory=dict)
    expanded: int = 0

    def add(self, size: int) -> None:
        if self.stack:
            self.stack[-1][0] += size


def check_text(text: str) -> None:
    """Raise YamlLimitError when `text` passes a limit; a text within them is left to the loader
    (malformed YAML raises YamlLimitError too, with libyaml's own words)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise YamlLimitError(1, f"file is {size} bytes; manifests are limited to {MAX_BYTES}")
    nul = text.find("\x00")
    if nul >= 0:
        raise YamlLimitError(text.count("\n", 0, nul) + 1, "NUL character (\\0) is not allowed")
    try:
        _scan_events(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise YamlLimitError(
            mark.line + 1 if mark else 1, f"not valid YAML: {exc.problem or exc}"
        ) from None
    except yaml.YAMLError as exc:
        raise YamlLimitError(1, f"not valid YAML: {exc}") from None


def _scan_events(text: str) -> None:
    scan = _Scan()
    for event in yaml.parse(text, Loader=_LOADER):
        line = event.start_mark.line + 1
        if isinstance(event, yaml.DocumentStartEvent):
            scan = _Scan()
        elif isinstance(event, yaml.CollectionStartEvent):
            _open(scan, event, line)
        elif isinstance(event, yaml.CollectionEndEvent):
            count, anchor = scan.stack.pop()
            _close(scan, anchor, count)
        elif isinstance(event, yaml.AliasEvent):
            _alias(scan, event.anchor, line)
        elif isinstance(event, yaml.ScalarEvent):
            _scalar(event, line)
            _close(scan, event.anchor, 1)


def _open(scan: _Scan, event: yaml.CollectionStartEvent, line: int) -> None:
    if len(scan.stack) >= MAX_DEPTH:
        raise YamlLimitError(line, f"nesting deeper than {MAX_DEPTH} levels")
    scan.stack.append([1, event.anchor])


def _close(scan: _Scan, anchor: str | None, count: int) -> None:
    if anchor is not None:
        scan.sizes[anchor] = count
    scan.add(count)


def _alias(scan: _Scan, anchor: str, line: int) -> None:
    size = scan.sizes.get(anchor, 1)
    scan.expanded += size
    if scan.expanded > MAX_ALIAS_NODES:
        raise YamlLimitError(
            line,
            f"aliases expand to more than {MAX_ALIAS_NODES} nodes (at *{anchor}); "
            "a YAML alias bomb is refused",
        )
    scan.add(size)


def _scalar(event: yaml.ScalarEvent, line: int) -> None:
    value = event.value
    if event.style or event.tag is not None or len(value) < INT64_DIGITS:
        return
    if _PLAIN_INT.fullmatch(value) and not -(2**63) <= _int(value) < 2**63:
        raise YamlLimitError(
            line,
            f"integer of {len(value.lstrip('+-'))} digits does not fit 64 bits "
            "(Kubernetes integers are int64)",
        )


def _int(value: str) -> int:
    digits = value.replace("_", "")
    return int(digits) if len(digits) <= INT64_DIGITS + 2 else 2**64
