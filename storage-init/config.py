"""Storage-init knobs, read once from the environment in `main()` and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kbundle.storage_init.errors import UsageError

GIB = 1024**3


@dataclass(frozen=True)
class StorageSettings:
    """Limits and retry policy; every field is env `KBUNDLE_STORAGE_<FIELD>`."""

    max_bytes: int = 1024 * GIB
    """Most bytes an archive may unpack to (zip-bomb guard); free space is checked as well."""
    max_files: int = 100_000
    """Most entries an archive may hold."""
    retries: int = 5
    """Attempts per file on transient network errors (connection drop, timeout, 5xx, 429)."""
    backoff_s: float = 1.0
    """First back-off delay; doubles per attempt (with jitter), capped at 30 s."""
    progress_interval_s: float = 10.0
    """Seconds between progress log lines when stderr is not a terminal."""
    chunk_bytes: int = 1024 * 1024
    """Read/write chunk: memory use stays at a few of these whatever the model size."""
    connect_timeout_s: float = 15.0
    read_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StorageSettings:
        env = os.environ if env is None else env
        values = {}
        for name, default in cls().__dict__.items():
            key = f"KBUNDLE_STORAGE_{name.upper()}"
            if key in env:
                try:
                    values[name] = type(default)(env[key])
                except ValueError as exc:
                    raise UsageError(
                        f"{key}={env[key]!r} is not a {type(default).__name__}"
                    ) from exc
        return cls(**values)
