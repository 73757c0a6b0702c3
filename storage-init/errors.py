"""Storage-init failures: each carries what failed and what the operator can do about it.

The entrypoint prints `message` and `hint` as the last log line, so a `kubectl logs` of the init
container ends with the answer rather than a traceback.
"""

from __future__ import annotations


class StorageInitError(Exception):
    """A failure reported to the user; `hint` says what to do next."""

    hint = "Check the storage URI and the init container's credentials, then restart the pod."

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(StorageInitError):
    hint = "Call it as: python -m kbundle.storage_init SRC_URI DEST_DIR [SRC_URI DEST_DIR ...]"


class FetchError(StorageInitError):
    """The transport failed (after retries where the error was transient)."""


class IntegrityError(StorageInitError):
    hint = (
        "The artifact differs from its published digest: re-upload the model or fix SHA256SUMS / "
        "the #sha256= digest, then restart the pod."
    )


class ArchiveError(StorageInitError):
    hint = (
        "Rebuild the archive with relative paths only, no links leaving it and no device files "
        "(e.g. `tar -czf model.tar.gz -C model_dir .`), or raise KBUNDLE_STORAGE_MAX_BYTES / "
        "KBUNDLE_STORAGE_MAX_FILES if the model is really that large."
    )


class SpaceError(StorageInitError):
    hint = "Give the model volume more space (emptyDir sizeLimit / PVC size) and restart the pod."
