"""`python -m kbundle.storage_init SRC_URI DEST_DIR [SRC_URI DEST_DIR ...]`: KServe's contract.

Exit 0 only when every DEST_DIR holds its complete, verified model (fetched, or kept because it
already was the source's current version). On failure the exit code says which kind of failure
(errors.py; docs/storage-init.md has the table), and the last log line, also written to
/dev/termination-log, names the URI, what failed and what to do; the failing DEST_DIR is as it was.
"""

from __future__ import annotations

import contextlib
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
    # kserve-storage may start process pools. Forking a process that already runs threads
    # (progress reporter, boto3) can deadlock the child on a lock held at fork time (seen here: a
    # test hung in futex_wait), so workers start from a clean interpreter.
    multiprocessing.set_start_method("spawn", force=True)
    settings = None
    try:
        pairs = parse_pairs(sys.argv[1:] if argv is None else argv)
        settings = StorageSettings.from_env()
        apply_s3_env_conventions()
        for source, dest in pairs:
            initialize(source, dest, settings)
    except StorageInitError as exc:
        return _fail(
            exc.exit_code,
            f"{_for(exc)}(exit {exc.exit_code}, {exc.kind}): {exc.message}. What to do: {exc.hint}",
            settings,
        )
    except OSError as exc:  # not DEST's volume (initialize classifies those): a local source
        return _fail(
            14,
            f"(exit 14, volume): {exc}. What to do: check the paths and their mounts, then restart the pod.",
            settings,
        )
    except SystemExit as exc:
        log.error(
            "storage-init failed: stopped by a signal (exit %s); the model dir was left as it was. "
            "What to do: nothing, the next run starts over.",
            exc.code,
        )
        return int(exc.code or 1)
    except Exception as exc:  # noqa: BLE001 - any failure must end in one clear last line
        log.exception("unexpected error")
        text = f"(exit 1, internal): unexpected {type(exc).__name__}: {exc}. What to do: report this with the log above."
        return _fail(1, text, settings)
    log.info("storage-init done: %d model(s) ready; peak memory %s", len(pairs), _peak_memory())
    return 0


def _for(exc: StorageInitError) -> str:
    return f"for {exc.uri} " if exc.uri and not exc.message.startswith(exc.uri) else ""


def _fail(code: int, text: str, settings: StorageSettings | None) -> int:
    """One last log line, also written to the termination log that the pod status shows."""
    line = f"storage-init failed {text}"
    log.error("%s", line)
    path = Path((settings or StorageSettings()).termination_log)
    if path.is_file():
        with contextlib.suppress(OSError):
            path.write_text(line[:4000] + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
