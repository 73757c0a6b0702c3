"""Structural schema checks: a CRD's openAPIV3Schema turned into JSON Schema for `jsonschema`.

What the API server does and this reproduces: types, enums, required, patterns and bounds;
unknown fields rejected (kubectl's strict field validation) except under
`x-kubernetes-preserve-unknown-fields`; `x-kubernetes-int-or-string`; embedded resources and
`metadata` checked as ObjectMeta; list-type map/set uniqueness. Null values of non-nullable fields
are pruned by the API server, so they are dropped before validation too.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import jsonschema
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from kbundle.manifests.findings import Issue, error
from kbundle.manifests.object_meta import OBJECT_META

RULE = "schema"
_QUANTITY_START = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)"
_PASSTHROUGH = (
    "type",
    "enum",
    "required",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
)
_JUNCTORS = ("anyOf", "allOf", "oneOf")


def to_json_schema(node: dict[str, Any], strict: bool = True) -> dict[str, Any]:
    """Translate one openAPIV3 schema node; `strict=False` inside anyOf/allOf/oneOf/not, where
    structural schemas only add value constraints and must not reject fields."""
    out: dict[str, Any] = {k: copy.deepcopy(node[k]) for k in _PASSTHROUGH if k in node}
    if node.get("exclusiveMinimum") is True and "minimum" in node:
        out["exclusiveMinimum"] = out.pop("minimum")
    if node.get("exclusiveMaximum") is True and "maximum" in node:
        out["exclusiveMaximum"] = out.pop("maximum")
    if node.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    elif any(k in node for k in _JUNCTORS):
        for k in _JUNCTORS:
            if k in node:
                out[k] = [to_json_schema(sub, strict=False) for sub in node[k]]
    if "not" in node:
        out["not"] = to_json_schema(node["not"], strict=False)
    if node.get("nullable"):
        _allow_null(out)
    if "properties" in node:
        out["properties"] = {k: to_json_schema(v, strict) for k, v in node["properties"].items()}
    if "items" in node and isinstance(node["items"], dict):
        out["items"] = to_json_schema(node["items"], strict)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = to_json_schema(extra, strict)
    elif isinstance(extra, bool):
        out["additionalProperties"] = extra
    if node.get("x-kubernetes-embedded-resource"):
        _embed_resource(out)
    if strict and _is_closed_object(node):
        out["additionalProperties"] = False
    for key in ("x-kubernetes-list-type", "x-kubernetes-list-map-keys"):
        if key in node:
            out[key] = node[key]
    return out


def _allow_null(out: dict[str, Any]) -> None:
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
    elif isinstance(kind, list) and "null" not in kind:
        out["type"] = [*kind, "null"]
    if "enum" in out and None not in out["enum"]:
        out["enum"] = [*out["enum"], None]


def _embed_resource(out: dict[str, Any]) -> None:
    props = out.setdefault("properties", {})
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    props["metadata"] = OBJECT_META
    out["required"] = sorted(set(out.get("required", [])) | {"apiVersion", "kind"})


def _is_closed_object(node: dict[str, Any]) -> bool:
    if node.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in node:
        return False
    return node.get("type") == "object" or "properties" in node


def root_schema(openapi: dict[str, Any]) -> dict[str, Any]:
    """The whole-object schema: metadata is ObjectMeta, apiVersion/kind always allowed."""
    out = to_json_schema(openapi)
    props = out.setdefault("properties", {})
    props["metadata"] = OBJECT_META
    props.setdefault("apiVersion", {"type": "string"})
    props.setdefault("kind", {"type": "string"})
    return out


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    if not isinstance(instance, list) or list_type not in ("map", "set"):
        return
    keys = schema.get("x-kubernetes-list-map-keys") or []
    seen: dict[str, int] = {}
    for index, item in enumerate(instance):
        if list_type == "map" and isinstance(item, dict):
            ident = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
        else:
            ident = json.dumps(item, sort_keys=True, default=str)
        if ident in seen:
            err = ValidationError(f"Duplicate value: {ident} (same as item [{seen[ident]}])")
            err.path.append(index)  # reported at the duplicate item
            yield err
        else:
            seen[ident] = index


_Validator = jsonschema.validators.extend(Draft7Validator, {"x-kubernetes-list-type": _list_type})


_COMPILED: dict[int, tuple[dict[str, Any], Any]] = {}


def validator_for(openapi: dict[str, Any]) -> Any:
    """One compiled validator per CRD schema object (translation takes a moment on big CRDs)."""
    hit = _COMPILED.get(id(openapi))
    if hit is None or hit[0] is not openapi:
        hit = (openapi, _Validator(root_schema(openapi)))
        _COMPILED[id(openapi)] = hit
    return hit[1]


def prune_nulls(node: Any) -> Any:
    """Drop null map values: the API server prunes them (nullable ones are valid anyway)."""
    if isinstance(node, dict):
        return {k: prune_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [prune_nulls(v) for v in node]
    return node


def check(openapi: dict[str, Any], obj: dict[str, Any]) -> list[Issue]:
    """Every structural problem of `obj` (plain JSON-like values) as path-addressed issues."""
    issues: list[Issue] = []
    for err in validator_for(openapi).iter_errors(prune_nulls(obj)):
        issues.extend(_to_issues(err))
    return sorted(issues, key=lambda i: [str(p) for p in i.path])


# Checked in order: bool before int (a bool is an int in Python).
_JSON_TYPES = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "array"),
    (dict, "object"),
)


def _json_type(value: Any) -> str:
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "null")


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _to_issues(err: ValidationError) -> list[Issue]:
    path = tuple(err.absolute_path)
    kind = err.validator
    if kind == "additionalProperties" and isinstance(err.instance, dict):
        known = set((err.schema.get("properties") or {}).keys())
        return [
            error(
                (*path, key),
                f'unknown field "{key}" (rejected by kubectl strict field validation)',
                RULE,
            )
            for key in err.instance
            if key not in known
        ]
    if kind == "required":
        missing = [
            k
            for k in err.validator_value
            if isinstance(err.instance, dict) and k not in err.instance
        ]
        return [error((*path, k), "Required value", RULE) for k in missing]
    if kind == "type":
        expected = (
            err.validator_value
            if isinstance(err.validator_value, str)
            else " or ".join(err.validator_value)
        )
        message = (
            f"must be of type {expected}, got {_json_type(err.instance)} {_short(err.instance)}"
        )
        if "string" in expected and _json_type(err.instance) in ("boolean", "integer", "number"):
            message += (
                " (quote it: YAML reads unquoted yes/no/on/off/true and numbers as non-strings)"
            )
    elif kind == "enum":
        allowed = ", ".join(_short(v) for v in err.validator_value)
        message = f"Unsupported value: {_short(err.instance)}: supported values: {allowed}"
    elif kind == "pattern" and err.validator_value.startswith(_QUANTITY_START):
        message = (
            f"Invalid value: {_short(err.instance)}: must be a quantity such as 500m, 2, 1.5Gi"
        )
    elif kind == "pattern":
        message = (
            f"Invalid value: {_short(err.instance)}: must match the regex {err.validator_value}"
        )
    elif kind == "x-kubernetes-list-type":
        message = err.message
    elif kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        op = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[
            kind
        ]
        message = f"Invalid value: {_short(err.instance)}: must be {op} {err.validator_value}"
    else:
        message = f"Invalid value: {err.message}"
    return [error(path, message, RULE)]
