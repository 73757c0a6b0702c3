"""Storage-init failures, classified: each class has its own exit code, what failed and the fix.

The entrypoint prints one last log line `storage-init failed for <URI> (exit N, <kind>): <what>.
What to do: <hint>` and exits with `exit_code`, so `kubectl describe pod` (the init container's
exit code and termination message) already says which kind of failure it was. Permanent errors
are raised at once; transient ones (timeouts, 5xx, resets) are retried by the transports within
the deadline and end as `TransientError`. The table is in docs/storage-init.md.
"""

from __future__ import annotations

import errno


class StorageInitError(Exception):
    """A failure reported to the user; `hint` says what to do next."""

    exit_code = 1
    kind = "error"
    hint = "Check the storage URI and the init container's credentials, then restart the pod."

    def __init__(self, message: str, hint: str | None = None, uri: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint
        self.uri = uri

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(StorageInitError):
    exit_code, kind = 2, "usage"
    hint = "Call it as: python -m kbundle.storage_init SRC_URI DEST_DIR [SRC_URI DEST_DIR ...]"


class FetchError(StorageInitError):
    """The source refused the request for a reason retrying cannot fix (other than the ones below)."""

    exit_code, kind = 15, "source-refused"


class NotFoundError(FetchError):
    exit_code, kind = 10, "not-found"
    hint = (
        "Check the URI (bucket, key or path; it is case-sensitive) and that the model was uploaded."
    )


class AccessError(FetchError):
    exit_code, kind = 11, "access-denied"
    hint = (
        "Give the init container valid credentials (the ServiceAccount's S3/GCS secret, "
        "'<host>-headers' for http, HF_TOKEN) that may read this URI, then restart the pod."
    )


class IntegrityError(StorageInitError):
    exit_code, kind = 12, "integrity"
    hint = (
        "The artifact differs from its published digest: re-upload the model or fix SHA256SUMS / "
        "the #sha256= digest, then restart the pod."
    )


class ArchiveError(StorageInitError):
    exit_code, kind = 13, "bad-archive"
    hint = (
        "Rebuild the archive with relative paths only, no links leaving it, no device files and "
        "no top-level .kbundle-staging / .kbundle-previous / .kbundle-source.json (e.g. `tar -czf model.tar.gz -C model_dir .`), or raise "
        "KBUNDLE_STORAGE_MAX_BYTES / KBUNDLE_STORAGE_MAX_FILES if the model is really that large."
    )


class VolumeError(StorageInitError):
    """DEST_DIR's volume cannot take the model: full, read-only or not writable by UID 1000."""

    exit_code, kind = 14, "volume"
    hint = "Make DEST_DIR a writable volume (the image runs as UID 1000), then restart the pod."


class SpaceError(VolumeError):
    hint = "Give the model volume more space (emptyDir sizeLimit / PVC size) and restart the pod."


class TransientError(FetchError):
    """Retryable failures went on past the attempts or the deadline."""

    exit_code, kind = 20, "transient"
    hint = (
        "The source kept timing out or failing (5xx, resets): check its health and the network, "
        "or raise KBUNDLE_STORAGE_DEADLINE_S; the pod restart retries."
    )


_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
VOLUME_ERRNOS = (*_SPACE, errno.EROFS, errno.EACCES, errno.EPERM)


def volume_error(exc: OSError) -> VolumeError:
    """An OSError raised while writing under DEST, as the volume failure it is."""
    where = f" ({exc.filename})" if exc.filename else ""
    text = f"cannot write the model: {exc.strerror or exc}{where}"
    return SpaceError(text) if exc.errno in _SPACE else VolumeError(text)
