"""Source URIs: the expected digest in the fragment, the transport kind, and log-safe redaction."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from kbundle.storage_init.errors import UsageError

_SHA256_FRAGMENT = re.compile(r"^sha256=([0-9a-fA-F]{64})$")
# kserve-storage's own transports (it matches Azure https URLs before the generic http catch-all).
_DELEGATED_PREFIXES = (
    "gs://",
    "hf://",
    "hdfs://",
    "webhdfs://",
    "modelscope://",
    "oci://",
)
_AZURE = re.compile(r"^https://[^/]+\.(blob|file)\.(core\.windows\.net|storage\.azure\.net)/")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


@dataclass(frozen=True)
class Source:
    """One SRC_URI: `uri` without fragment, `kind` (http | s3 | local | delegated), optional digest."""

    uri: str
    kind: str
    sha256: str | None

    @property
    def safe(self) -> str:
        return redact(self.uri)

    @property
    def local_path(self) -> str:
        return self.uri.removeprefix("file://")


def parse_source(raw: str) -> Source:
    """Split off `#sha256=<hex>` and pick the transport; UsageError for anything else."""
    uri, _, fragment = raw.partition("#")
    digest = None
    if fragment:
        match = _SHA256_FRAGMENT.match(fragment)
        if not match:
            raise UsageError(
                f"{redact(raw)}: unsupported URI fragment; only #sha256=<64 hex> is understood"
            )
        digest = match.group(1).lower()
    if not uri:
        raise UsageError("empty SRC_URI")
    return Source(uri=uri, kind=_kind(uri), sha256=digest)


def _kind(uri: str) -> str:
    if uri.startswith("s3://"):
        return "s3"
    if uri.startswith(_DELEGATED_PREFIXES) or _AZURE.match(uri):
        return "delegated"
    if uri.startswith(("http://", "https://")):
        if uri.endswith(".git"):
            return "delegated"
        return "http"
    if uri.startswith("file://") or uri.startswith("/") or os.path.exists(uri):
        return "local"
    if uri.startswith("pvc://"):
        raise UsageError(
            f"{uri}: pvc:// is mounted by the KServe webhook, which passes /mnt/pvc/... instead",
            hint="Let KServe handle pvc:// storageUris (no ClusterStorageContainer needed).",
        )
    raise UsageError(
        f"{redact(uri)}: unsupported storage URI",
        hint="Use s3://, gs://, hf://, azure https://, http(s)://, file:// or a local path.",
    )


def redact(uri: str) -> str:
    """The URI without user:password, query string (presigned signatures) or fragment."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)
