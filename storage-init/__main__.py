"""`python -m kbundle.storage_init SRC_URI DEST_DIR [SRC_URI DEST_DIR ...]`: KServe's contract.

Exit 0 only when every DEST_DIR holds its complete, verified model. On failure the exit code is
1 and the last line of the log says what failed and what to do; the failing DEST_DIR is as it was.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
from pathlib import Path

from kbundle.storage_init.config import StorageSettings
from kbundle.storage_init.delegated import apply_s3_env_conventions
from kbundle.storage_init.errors import StorageInitError, UsageError
from kbundle.storage_init.initializer import initialize
from kbundle.storage_init.uris import Source, parse_source

log = logging.getLogger("kbundle.storage_init")


def parse_pairs(argv: list[str]) -> list[tuple[Source, Path]]:
    if not argv or len(argv) % 2:
        raise UsageError(f"expected SRC_URI DEST_DIR pairs, got {len(argv)} argument(s)")
    return [(parse_source(argv[i]), Path(argv[i + 1])) for i in range(0, len(argv), 2)]


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the staging cleanup


def _peak_memory() -> str:
    """This program's peak resident memory (VmHWM: counted from exec, unlike ru_maxrss, which
    also holds whatever the parent process had resident when it forked us)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return f"{int(line.split()[1]) / 1024:.0f} MiB"
    except OSError:
        pass
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    # kserve-storage downloads S3 objects in a multiprocessing.Pool. Forking a process that
    # already runs threads (progress reporter, boto3) can deadlock the child on a lock held at fork
    # time (seen here: a test hung in futex_wait), so workers start from a clean interpreter.
    multiprocessing.set_start_method("spawn", force=True)
    try:
        pairs = parse_pairs(sys.argv[1:] if argv is None else argv)
        settings = StorageSettings.from_env()
        apply_s3_env_conventions()
        for source, dest in pairs:
            initialize(source, dest, settings)
    except StorageInitError as exc:
        log.error("storage-init failed: %s. What to do: %s", exc.message, exc.hint)
        return 1
    except OSError as exc:  # the model volume: read-only, full, or not ours
        log.error(
            "storage-init failed: %s. What to do: make DEST_DIR a writable volume (the image runs as "
            "UID 1000) with room for the model, then restart the pod.",
            exc,
        )
        return 1
    except SystemExit as exc:
        log.error(
            "storage-init failed: stopped by a signal (exit %s); the model dir was left as it was. "
            "What to do: nothing, the next run starts over.",
            exc.code,
        )
        return int(exc.code or 1)
    except Exception as exc:  # noqa: BLE001 - any failure must end in one clear last line
        log.exception("unexpected error")
        log.error(
            "storage-init failed: unexpected %s: %s. What to do: report this with the log above.",
            type(exc).__name__,
            exc,
        )
        return 1
    log.info("storage-init done: %d model(s) ready; peak memory %s", len(pairs), _peak_memory())
    return 0


if __name__ == "__main__":
    sys.exit(main())
