"""Models for local components: bucket URIs mapped to folders, fetched by our storage initializer.

`--storage-map s3://bucket=/local/dir` turns `s3://bucket/a/b` into `/local/dir/a/b`, so the file
that goes to the cluster runs offline unchanged. `fetch_model` is the one place that runs the
storage initializer (`python -m kbundle.storage_init SRC DEST`, KServe's contract); it ships in
the same package, so there is no second copy path.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from kbundle.errors import ConfigError

logger = logging.getLogger("kbundle.up")
SAMPLE_BUCKET = "s3://kbundle-models"
FETCHED_MARK = ".kbundle-fetched"


@dataclass(frozen=True)
class StorageMap:
    """Ordered (uri prefix, local folder) pairs; the longest matching prefix wins."""

    pairs: tuple[tuple[str, Path], ...]

    @classmethod
    def parse(cls, items: list[str], defaults: dict[str, Path] | None = None) -> StorageMap:
        pairs: dict[str, Path] = dict(defaults or {})
        for item in items:
            prefix, sep, folder = item.partition("=")
            if not sep or "://" not in prefix or not folder:
                raise ConfigError(
                    f"--storage-map {item!r}: expected SCHEME://BUCKET[/PREFIX]=/local/dir"
                )
            pairs[prefix.rstrip("/")] = Path(folder).expanduser().resolve()
        return cls(tuple(sorted(pairs.items(), key=lambda kv: -len(kv[0]))))

    def resolve(self, uri: str) -> str:
        """The URI storage-init should fetch: a mapped local path, or the URI unchanged."""
        for prefix, folder in self.pairs:
            if uri == prefix or uri.startswith(prefix + "/"):
                return str(folder / uri[len(prefix) :].lstrip("/"))
        return uri

    def uses_samples(self, uri: str) -> bool:
        return uri == SAMPLE_BUCKET or uri.startswith(SAMPLE_BUCKET + "/")


def fetch_model(uri: str, dest: Path) -> None:
    """Put the model at `uri` into `dest` with the storage initializer, as the pod's init container
    does (kbundle.storage_init ships in the same package). Raises ConfigError with the reason."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _run_storage_init(uri, dest)


def _run_storage_init(uri: str, dest: Path) -> None:
    cmd = [sys.executable, "-m", "kbundle.storage_init", uri, str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise ConfigError(f"storage-init failed for {uri} (exit {proc.returncode}): {tail[0]}")


def source_fingerprint(uri: str) -> str:
    """Cheap change detector for a local source (names, sizes, mtimes); the URI itself for remote ones."""
    digest = hashlib.sha256(uri.encode())
    path = Path(urlparse(uri).path if uri.startswith("file://") else uri)
    if "://" not in uri or uri.startswith("file://"):
        for p in sorted(path.rglob("*")) if path.is_dir() else []:
            if p.is_file():
                st = p.stat()
                digest.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def cached_fetch(uri: str, cache_dir: Path) -> Path:
    """Fetch `uri` into `cache_dir/<key>` once per source state; later calls reuse it."""
    fingerprint = source_fingerprint(uri)
    dest = Path(cache_dir) / hashlib.sha256(uri.encode()).hexdigest()[:16]
    mark = dest.parent / (dest.name + FETCHED_MARK)
    if dest.is_dir() and mark.is_file() and mark.read_text() == fingerprint:
        return dest
    logger.info("fetching %s -> %s", uri, dest)
    fetch_model(uri, dest)
    mark.write_text(fingerprint)
    return dest


def default_storage_map(models_dir: Path) -> dict[str, Path]:
    return {SAMPLE_BUCKET: Path(models_dir)}
