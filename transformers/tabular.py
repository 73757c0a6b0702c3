"""Tabular feature: named columns -> one standardised feature matrix in the engine's column order.

Clients send one V2 input per column (numbers, or BYTES for categories), or one BYTES input of
JSON objects, one per row. Each column is encoded for the whole request in numpy: numerics are
standardised, categoricals looked up in their declared vocabulary with a vectorised search and
one-hot or index encoded. Missing values follow the column's policy; an unknown category or a
missing value under `missing: error` is a 400 naming the column (and the row).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from kbundle.errors import ConfigError, InvalidRequest
from kbundle.specs import DYNAMIC, TensorSpec, numpy_dtype
from kbundle.transformers.features import bytes_column, column, texts
from kbundle.transformers.spec import Entry


@dataclass(frozen=True)
class NumericColumn:
    name: str
    mean: float
    std: float
    missing: str  # error | mean | zero | value
    fill: float

    width = 1

    def encode(self, values: np.ndarray) -> np.ndarray:
        """(N,) float64 with NaN for missing -> (N, 1) standardised."""
        missing = np.isnan(values)
        if missing.any():
            if self.missing == "error":
                row = int(np.argmax(missing))
                raise InvalidRequest(
                    f"feature '{self.name}': value missing in row {row} (missing: error)"
                )
            fill = {"mean": self.mean, "zero": 0.0}.get(self.missing, self.fill)
            values = np.where(missing, fill, values)
        return ((values - self.mean) / self.std)[:, None]


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    vocabulary: tuple[str, ...]
    encoding: str  # onehot | index
    missing: str  # error | zeros | value
    fill: str
    unknown: str  # error | zeros

    def __post_init__(self) -> None:
        # The sorted vocabulary and its permutation, for np.searchsorted lookups.
        order = np.argsort(np.asarray(self.vocabulary))
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_sorted", np.asarray(self.vocabulary)[order])

    @property
    def width(self) -> int:
        return len(self.vocabulary) if self.encoding == "onehot" else 1

    def encode(self, values: np.ndarray) -> np.ndarray:
        """(N,) str array, "" for missing -> (N, width): one-hot rows or the vocabulary index."""
        order, ordered = self._order, self._sorted
        missing = values == ""
        if missing.any() and self.missing == "error":
            raise InvalidRequest(
                f"feature '{self.name}': value missing in row {int(np.argmax(missing))} (missing: error)"
            )
        if self.missing == "value":
            values = np.where(missing, self.fill, values)
            missing = np.zeros_like(missing)
        position = np.clip(np.searchsorted(ordered, values), 0, len(ordered) - 1)
        known = ordered[position] == values
        unknown = ~known & ~missing
        if unknown.any() and self.unknown == "error":
            row = int(np.argmax(unknown))
            raise InvalidRequest(
                f"feature '{self.name}': unknown category {str(values[row])!r} in row {row} "
                f"(vocabulary: {list(self.vocabulary)})"
            )
        index = np.where(known, order[position], -1)
        if self.encoding == "index":
            # Missing/unknown rows go to an out-of-vocabulary bucket just past the vocabulary.
            return np.where(index < 0, len(self.vocabulary), index)[:, None].astype(np.float64)
        out = np.zeros((len(values), len(self.vocabulary)))
        rows = np.nonzero(known)[0]
        out[rows, index[rows]] = 1.0
        return out


Column = NumericColumn | CategoricalColumn


def _column_from_spec(entry: Entry) -> Column:
    name = entry.require("name", kind=str)
    kind = entry.choice("type", ("numeric", "categorical"), "numeric")
    if kind == "numeric":
        missing = entry.choice("missing", ("error", "mean", "zero", "value"), "error")
        return NumericColumn(
            name=name,
            mean=float(entry.get("mean", 0.0, kind=(int, float))),
            std=float(entry.positive("std", 1.0)),
            missing=missing,
            fill=float(entry.require("value", kind=(int, float)) if missing == "value" else 0.0),
        )
    vocabulary = entry.require("vocabulary", kind=list)
    vocabulary = tuple(str(v) for v in vocabulary)
    if len(set(vocabulary)) != len(vocabulary) or "" in vocabulary:
        raise ConfigError(f"{entry.where}: 'vocabulary' must hold distinct non-empty values")
    missing = entry.choice("missing", ("error", "zeros", "value"), "error")
    fill = str(entry.require("value")) if missing == "value" else ""
    if missing == "value" and fill not in vocabulary:
        raise ConfigError(f"{entry.where}: missing 'value' {fill!r} is not in the vocabulary")
    return CategoricalColumn(
        name=name,
        vocabulary=vocabulary,
        encoding=entry.choice("encoding", ("onehot", "index"), "onehot"),
        missing=missing,
        fill=fill,
        unknown=entry.choice("unknown", ("error", "zeros"), "error"),
    )


class TabularFeature:
    """`kind: tabular`: named columns (per-column inputs or JSON rows) -> one [N, width] tensor."""

    blocking = False

    def __init__(self, tensor: str, columns: list[Column], datatype: str, rows_input: str | None):
        self.tensor, self.columns, self.datatype, self.rows_input = (
            tensor,
            columns,
            datatype,
            rows_input,
        )
        self._names = {c.name for c in columns}

    @classmethod
    def from_spec(cls, entry: Entry, model_dir: Path) -> TabularFeature:
        items = entry.require("columns", kind=list)
        children = [entry.child(f"columns[{i}]", item) for i, item in enumerate(items)]
        columns = [_column_from_spec(child) for child in children]
        for child in children:
            child.check_unknown()
        names = [c.name for c in columns]
        if len(set(names)) != len(names):
            raise ConfigError(f"{entry.where}: column names must be distinct")
        return cls(
            tensor=entry.require("tensor", kind=str),
            columns=columns,
            datatype=entry.datatype("datatype", "FP32"),
            rows_input=entry.get("rows_input", "rows", kind=str),
        )

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    def client_inputs(self) -> list[TensorSpec]:
        specs = [
            TensorSpec(c.name, "FP64" if isinstance(c, NumericColumn) else "BYTES", (DYNAMIC,))
            for c in self.columns
        ]
        if self.rows_input:
            specs.append(TensorSpec(self.rows_input, "BYTES", (DYNAMIC,)))
        return specs

    def consumes(self, name: str) -> bool:
        return name in self._names or name == self.rows_input

    def encode(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.rows_input and self.rows_input in inputs:
            clash = sorted(self._names & set(inputs))
            if clash:
                raise InvalidRequest(
                    f"input '{self.rows_input}': send rows or columns, not both (also got {clash})"
                )
            raw = self._columns_from_rows(inputs[self.rows_input])
        else:
            raw = self._columns_from_inputs(inputs)
        parts = [col.encode(raw[col.name]) for col in self.columns]
        return {self.tensor: np.concatenate(parts, axis=1).astype(numpy_dtype(self.datatype))}

    # -- the two request forms ---------------------------------------------------------------
    def _columns_from_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        present = [c for c in self.columns if c.name in inputs]
        if not present:
            raise InvalidRequest(
                f"no tabular features given: send inputs {[c.name for c in self.columns]}"
                + (f" or input '{self.rows_input}' (JSON rows)" if self.rows_input else "")
            )
        rows = len(column(f"input '{present[0].name}'", inputs[present[0].name]))
        out = {}
        for col in self.columns:
            where = f"input '{col.name}'"
            if col.name not in inputs:
                if col.missing == "error":
                    raise InvalidRequest(f"{where} is missing (tabular feature, missing: error)")
                out[col.name] = _absent(col, rows)
                continue
            values = column(where, inputs[col.name])
            if len(values) != rows:
                raise InvalidRequest(
                    f"{where}: {len(values)} rows, but '{present[0].name}' has {rows}"
                )
            out[col.name] = (
                _numeric(where, values)
                if isinstance(col, NumericColumn)
                else _strings(where, values)
            )
        return out

    def _columns_from_rows(self, array: np.ndarray) -> dict[str, np.ndarray]:
        where = f"input '{self.rows_input}'"
        rows = _parse_rows(where, bytes_column(where, array))
        for index, row in enumerate(rows):
            extra = row.keys() - self._names
            if extra:
                raise InvalidRequest(
                    f"{where} row {index}: unknown feature(s) {sorted(extra)} (features: {[c.name for c in self.columns]})"
                )
        out = {}
        for col in self.columns:
            values = [row.get(col.name) for row in rows]
            if isinstance(col, NumericColumn):
                out[col.name] = _numeric(
                    f"feature '{col.name}'", [np.nan if v is None else v for v in values]
                )
            else:
                out[col.name] = np.asarray(["" if v is None else str(v) for v in values], dtype=str)
        return out


def _parse_rows(where: str, values: np.ndarray) -> list[dict]:
    """All rows in one orjson call (the request's elements joined as one JSON array)."""
    try:
        rows = orjson.loads(b"[" + b",".join(values) + b"]")
    except (orjson.JSONDecodeError, TypeError):
        rows = None
    if rows is None or len(rows) != len(values):
        for index, value in enumerate(values):  # slow path, only to name the bad row
            try:
                orjson.loads(value)
            except (orjson.JSONDecodeError, TypeError):
                raise InvalidRequest(f"{where} row {index}: not a JSON object") from None
        raise InvalidRequest(f"{where}: each element must be one JSON object")
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise InvalidRequest(f"{where} row {bad}: must be a JSON object of feature: value")
    return rows


def _numeric(where: str, values) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidRequest(f"{where}: values must be numbers") from None
    if array.ndim != 1:
        raise InvalidRequest(f"{where}: values must be numbers, one per row")
    return array


def _strings(where: str, values: np.ndarray) -> np.ndarray:
    if values.dtype == object:
        return np.asarray(texts(where, values), dtype=str)
    if values.dtype.kind in "iub":
        return values.astype(str)
    raise InvalidRequest(
        f"{where}: categorical values must be BYTES (strings) or integers, got {values.dtype.name}"
    )


def _absent(col: Column, rows: int) -> np.ndarray:
    if isinstance(col, NumericColumn):
        return np.full(rows, np.nan)
    return np.full(rows, "", dtype=object).astype(str)
