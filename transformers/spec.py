"""The transformer's own model config: `transformer.yaml` in its model dir.

The spec lives beside the model (the transformer has its own storageUri), so a new model version
can change its features without a new image. It names the feature kinds that turn what clients
send into the predictor's tensors (`inputs:`) and the steps that turn the predictor's answer into
what clients get back (`outputs:`). Every mistake is a ConfigError at start-up naming the entry
and the key, never a surprise on the first request.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kbundle.errors import ConfigError
from kbundle.specs import V2_TO_NUMPY

SPEC_FILE = "transformer.yaml"

# kind -> "module:Class"; each class has `from_spec(entry: Entry, model_dir: Path)`.
INPUT_KINDS: dict[str, str] = {
    "image": "kbundle.transformers.image:ImageFeature",
    "tabular": "kbundle.transformers.tabular:TabularFeature",
    "text": "kbundle.transformers.text:TextFeature",
    "tensor": "kbundle.transformers.passthrough:TensorFeature",
}
OUTPUT_KINDS: dict[str, str] = {
    "topk": "kbundle.transformers.image:TopKLabels",
    "embedding": "kbundle.transformers.text:PooledEmbedding",
    "tensor": "kbundle.transformers.passthrough:TensorOutput",
}


class Entry:
    """One `inputs:`/`outputs:` item with typed getters whose errors name the entry and key."""

    def __init__(self, where: str, data: dict[str, Any]):
        self.where = where
        self.data = data
        self._read: set[str] = {"kind"}

    def get(
        self, key: str, default: Any = None, kind: type | tuple[type, ...] | None = None
    ) -> Any:
        self._read.add(key)
        value = self.data.get(key, default)
        if kind is not None and value is not None and not _is_kind(value, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise ConfigError(f"{self.where}: '{key}' must be {names}, got {value!r}")
        return value

    def require(self, key: str, kind: type | tuple[type, ...] | None = None) -> Any:
        if self.data.get(key) is None:
            raise ConfigError(f"{self.where}: '{key}' is required")
        return self.get(key, kind=kind)

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = str(self.get(key, default))
        if value not in choices:
            raise ConfigError(
                f"{self.where}: '{key}' must be one of {list(choices)}, got {value!r}"
            )
        return value

    def datatype(self, key: str, default: str) -> str:
        value = str(self.get(key, default)).upper()
        if value not in V2_TO_NUMPY:
            raise ConfigError(f"{self.where}: '{key}' {value!r} is not a V2 datatype")
        return value

    def positive(self, key: str, default: float | None = None) -> float:
        value = self.get(key, default, kind=(int, float))
        if value is None or value <= 0:
            raise ConfigError(f"{self.where}: '{key}' must be a positive number, got {value!r}")
        return value

    def child(self, where: str, data: Any) -> Entry:
        if not isinstance(data, dict):
            raise ConfigError(f"{self.where}.{where}: must be a mapping, got {data!r}")
        return Entry(f"{self.where}.{where}", data)

    def check_unknown(self) -> None:
        """Refuse typos: a key nobody read is a key the author meant to mean something."""
        unknown = sorted(set(self.data) - self._read)
        if unknown:
            raise ConfigError(f"{self.where}: unknown key(s) {unknown}")


def _is_kind(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        return False
    return isinstance(value, kinds)


def read_spec(model_dir: str | Path) -> dict[str, Any]:
    """The parsed transformer.yaml (a mapping), or ConfigError saying what is wrong."""
    path = Path(model_dir) / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"no {SPEC_FILE} in the transformer model dir {model_dir}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a mapping with 'inputs' and 'outputs'")
    unknown = sorted(set(data) - {"predictor", "inputs", "outputs"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}")
    return data


def build_steps(data: dict[str, Any], section: str, kinds: dict[str, str], model_dir: Path) -> list:
    """Instantiate each entry of `inputs:` or `outputs:` with the class its `kind` names."""
    items = data.get(section)
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{SPEC_FILE}: '{section}' must be a non-empty list")
    steps = []
    for index, item in enumerate(items):
        where = f"{SPEC_FILE} {section}[{index}]"
        if not isinstance(item, dict) or item.get("kind") not in kinds:
            raise ConfigError(f"{where}: needs 'kind', one of {sorted(kinds)}")
        entry = Entry(f"{where} ({item['kind']})", item)
        module_name, class_name = kinds[item["kind"]].split(":")
        step = getattr(importlib.import_module(module_name), class_name).from_spec(entry, model_dir)
        entry.check_unknown()
        steps.append(step)
    return steps


def read_labels(entry: Entry, model_dir: Path) -> list[str] | None:
    """`labels:` as an inline list or a file in the model dir (one label per line)."""
    labels = entry.get("labels")
    if labels is None:
        return None
    if isinstance(labels, list):
        return [str(label) for label in labels]
    path = model_dir / str(labels)
    if not path.is_file():
        raise ConfigError(f"{entry.where}: labels file {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
