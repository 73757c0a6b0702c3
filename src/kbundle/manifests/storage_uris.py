"""Which storage URIs KServe accepts (webhook utils.go) and where an object declares them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from kbundle.manifests import isvc

# pkg/controller/v1beta1/inferenceservice/utils/utils.go: prefixes accepted without a CSC.
SUPPORTED_PREFIXES = (
    "gs://",
    "s3://",
    "pvc://",
    "file://",
    "https://",
    "http://",
    "hdfs://",
    "webhdfs://",
    "oci://",
    "oci+native://",
    "oci+fetch://",
    "hf://",
)
AZURE_BLOB = re.compile(r"^https://(.+?)\.blob\.core\.windows\.net/(.+)$")
STORAGE_URI_ENV = "STORAGE_URI"


def uri_formats(csc: dict[str, Any]) -> list[dict[str, str]]:
    """The supportedUriFormats of an enabled initContainer ClusterStorageContainer."""
    spec = csc.get("spec") if isinstance(csc.get("spec"), dict) else {}
    if csc.get("disabled") or spec.get("workloadType", "initContainer") != "initContainer":
        return []
    return [f for f in spec.get("supportedUriFormats") or [] if isinstance(f, dict)]


def matches_format(uri: str, fmt: dict[str, str]) -> bool:
    if fmt.get("prefix") and uri.startswith(fmt["prefix"]):
        return True
    if fmt.get("regex"):
        try:
            return re.search(fmt["regex"], uri) is not None
        except re.error:
            return False
    return False


def is_supported(uri: str, formats: list[dict[str, str]]) -> bool:
    """True when a CSC matches, the URI is a local path, or it has a built-in prefix."""
    if any(matches_format(uri, f) for f in formats):
        return True
    if "://" not in uri:
        return True  # absolute or relative local path
    return uri.startswith(SUPPORTED_PREFIXES) or AZURE_BLOB.match(uri) is not None


def declared_uris(component: dict[str, Any], path: isvc.Path_) -> Iterator[tuple[isvc.Path_, str]]:
    """(path, uri) of every storage URI a component declares: storageUri, storageUris[], env."""
    for key in isvc.FRAMEWORKS:
        impl = component.get(key)
        if isinstance(impl, dict) and isinstance(impl.get("storageUri"), str):
            yield (*path, key, "storageUri"), impl["storageUri"]
    for index, item in enumerate(component.get("storageUris") or []):
        if isinstance(item, dict) and isinstance(item.get("uri"), str):
            yield (*path, "storageUris", index, "uri"), item["uri"]
    for cpath, container in isvc.containers(component, path):
        found = isvc.env_value(container, STORAGE_URI_ENV)
        if found is not None and isinstance(found[1], str):
            yield (*cpath, "env", found[0], "value"), found[1]
