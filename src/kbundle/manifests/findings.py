"""One finding = one problem at one place in one file; the validator's only output type."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ERROR = "error"
WARNING = "warning"

Path_ = tuple[str | int, ...]
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Finding:
    """`path` is the field path inside the object; `rule` names the check (schema, webhook/..., lint/...)."""

    severity: str
    file: Path
    line: int
    path: Path_
    message: str
    rule: str
    obj: str = ""

    def format(self) -> str:
        where = f"{self.file}:{self.line}"
        obj = f" [{self.obj}]" if self.obj else ""
        field = f" {format_path(self.path)}:" if self.path else ""
        return f"{where}: {self.severity}{obj}{field} {self.message} ({self.rule})"

    def as_dict(self) -> dict:
        return {
            "severity": self.severity,
            "file": str(self.file),
            "line": self.line,
            "path": format_path(self.path),
            "message": self.message,
            "rule": self.rule,
            "object": self.obj,
        }


@dataclass(frozen=True)
class Issue:
    """A finding before it is placed in a file: what the rule modules return."""

    severity: str
    path: Path_
    message: str
    rule: str


def error(path: Path_, message: str, rule: str) -> Issue:
    return Issue(ERROR, tuple(path), message, rule)


def warning(path: Path_, message: str, rule: str) -> Issue:
    return Issue(WARNING, tuple(path), message, rule)


def format_path(path: Iterable[str | int]) -> str:
    """`("spec", "predictor", "containers", 0, "env")` -> `spec.predictor.containers[0].env`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(str(part)):
            out += ("." if out else "") + str(part)
        else:  # keys such as nvidia.com/gpu or annotation names
            out += f'["{part}"]'
    return out
