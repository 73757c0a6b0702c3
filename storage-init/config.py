"""Storage-init knobs, read once from the environment in `main()` and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kbundle.retry import RetryPolicy
from kbundle.storage_init.errors import UsageError

GIB = 1024**3


@dataclass(frozen=True)
class StorageSettings:
    """Limits and retry policy; every field is env `KBUNDLE_STORAGE_<FIELD>`."""

    max_bytes: int = 1024 * GIB
    """Most bytes an archive may unpack to (zip-bomb guard); free space is checked as well."""
    max_files: int = 100_000
    """Most entries an archive may hold."""
    retries: int = 8
    """Most attempts per file on transient errors (connection drop or reset, timeout, 5xx, 429)."""
    deadline_s: float = 600.0
    """Total time for fetching one SRC_URI, all files and retries included; then exit 20."""
    backoff_s: float = 1.0
    """First back-off delay; doubles per attempt (with +-20 % jitter), capped at max_backoff_s."""
    max_backoff_s: float = 30.0
    """Longest single back-off delay."""
    parallel: int = 8
    """Files of a multi-file source (an s3 prefix) transferred at once."""
    skip_unchanged: bool = True
    """Keep DEST as it is when it holds a verified copy of the same, unchanged source."""
    termination_log: str = "/dev/termination-log"
    """Where the failure line is also written, when the file exists (Kubernetes shows it in the pod status)."""
    progress_interval_s: float = 10.0
    """Seconds between progress log lines when stderr is not a terminal."""
    chunk_bytes: int = 1024 * 1024
    """Read/write chunk: memory use stays at a few of these whatever the model size."""
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("retries", "parallel", "max_files", "chunk_bytes"):
            if getattr(self, name) < 1:
                raise UsageError(f"KBUNDLE_STORAGE_{name.upper()} must be at least 1")
        if self.deadline_s <= 0 or self.backoff_s < 0:
            raise UsageError("KBUNDLE_STORAGE_DEADLINE_S must be > 0 and _BACKOFF_S >= 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StorageSettings:
        env = os.environ if env is None else env
        values = {}
        for name, default in cls().__dict__.items():
            key = f"KBUNDLE_STORAGE_{name.upper()}"
            if key in env:
                try:
                    values[name] = _parse(type(default), env[key])
                except ValueError as exc:
                    raise UsageError(
                        f"{key}={env[key]!r} is not a {type(default).__name__}"
                    ) from exc
        return cls(**values)

    def retry_policy(self) -> RetryPolicy:
        """The back-off for one SRC_URI's transfers (THE retry helper, `kbundle.retry`)."""
        return RetryPolicy(self.retries, self.backoff_s, self.max_backoff_s, self.deadline_s)


def _parse(kind: type, text: str) -> object:
    if kind is bool:
        if text.strip().lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise ValueError(text)
        return text.strip().lower() in ("1", "true", "yes")
    return kind(text)
