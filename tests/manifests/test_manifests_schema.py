"""Structural-schema features the KServe CRDs use little or not at all, on a small synthetic CRD:
preserve-unknown-fields, embedded resources (metadata as ObjectMeta), int-or-string, nullable and
pruned nulls, list-type set, string maps, exclusive bounds, served versions."""

from __future__ import annotations

import pytest
import yaml

from kbundle.manifests.check import validate_paths
from kbundle.manifests.crds import load_crd_path

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "names": {"kind": "Widget", "plural": "widgets"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"x-kubernetes-int-or-string": True},
                                    "free": {
                                        "type": "object",
                                        "x-kubernetes-preserve-unknown-fields": True,
                                    },
                                    "template": {
                                        "type": "object",
                                        "x-kubernetes-embedded-resource": True,
                                    },
                                    "note": {"type": "string", "nullable": True},
                                    "count": {"type": "integer"},
                                    "ratio": {
                                        "type": "number",
                                        "minimum": 0,
                                        "exclusiveMinimum": True,
                                    },
                                    "tags": {
                                        "type": "array",
                                        "items": {"type": "string"},
                                        "x-kubernetes-list-type": "set",
                                    },
                                    "labels": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                    },
                                },
                            },
                        },
                    }
                },
            },
            {
                "name": "v0",
                "served": False,
                "storage": False,
                "schema": {"openAPIV3Schema": {"type": "object"}},
            },
        ],
    },
}


@pytest.fixture(scope="module")
def widget_crds(tmp_path_factory):
    path = tmp_path_factory.mktemp("crd") / "widget.yaml"
    path.write_text(yaml.safe_dump(CRD))
    return load_crd_path(path)


def _check(tmp_path, crds, spec, api_version="example.com/v1"):
    obj = {"apiVersion": api_version, "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(obj, sort_keys=False))
    return {(f.as_dict()["path"], f.message) for f in validate_paths([path], crds).findings}


def test_accepted_forms(tmp_path, widget_crds):
    spec = {
        "size": "10Gi",
        "free": {"anything": {"goes": [1, 2]}},
        "template": {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "labels": {"a": "b"}},
        },
        "note": None,
        "count": None,  # not nullable: the API server prunes it, so no error
        "ratio": 0.5,
        "tags": ["a", "b"],
        "labels": {"x": "z"},  # (an unquoted y would be a YAML 1.1 boolean, as for kubectl)
    }
    assert _check(tmp_path, widget_crds, spec) == set()
    assert _check(tmp_path, widget_crds, {"size": 3}) == set()


@pytest.mark.parametrize(
    ("spec", "path", "fragment"),
    [
        ({}, "spec.size", "Required value"),
        ({"size": [1]}, "spec.size", "must be of type integer or string"),
        ({"size": 1, "extra": 1}, "spec.extra", 'unknown field "extra"'),
        (
            {"size": 1, "template": {"metadata": {"name": "p"}}},
            "spec.template.apiVersion",
            "Required value",
        ),
        (
            {"size": 1, "template": {"apiVersion": "v1", "kind": "Pod", "metadata": {"nme": "p"}}},
            "spec.template.metadata.nme",
            'unknown field "nme"',
        ),
        ({"size": 1, "ratio": 0}, "spec.ratio", "must be > 0"),
        ({"size": 1, "tags": ["a", "a"]}, "spec.tags[1]", "Duplicate value"),
        ({"size": 1, "labels": {"x": 1}}, "spec.labels.x", "must be of type string"),
    ],
)
def test_rejected_forms(tmp_path, widget_crds, spec, path, fragment):
    findings = _check(tmp_path, widget_crds, spec)
    assert any(p == path and fragment in m for p, m in findings), findings


def test_unserved_version_is_rejected(tmp_path, widget_crds):
    findings = _check(tmp_path, widget_crds, {"size": 1}, api_version="example.com/v0")
    assert (
        "apiVersion",
        "Widget is not served as example.com/v0; served: example.com/v1",
    ) in findings
