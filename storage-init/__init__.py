"""kbundle storage initializer: KServe's `SRC_URI DEST_DIR [...]` init container, done safely.

Fetches each model into a hidden staging dir inside DEST_DIR (the pod's model mount), verifies it
(SHA256SUMS, `#sha256=` on archive URIs), unpacks archives with path/size guards, optionally
builds a GPU engine, then moves it into place. On any failure DEST_DIR is left as it was.
Run it as `python -m kbundle.storage_init SRC_URI DEST_DIR [SRC_URI DEST_DIR ...]`.
"""
