"""Find a running `kbundle up` (its up.json in the state folder) and read its ingress status."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from kbundle.errors import ConfigError
from kbundle.local.app import read_up_file
from kbundle.local.ingress_rest import STATUS_PATH


def find_running(root: Path, name: str | None = None) -> dict:
    """The up.json of the running InferenceService `name` (or the only one running)."""
    folders = [root / name] if name else sorted(p for p in root.glob("*") if p.is_dir())
    running = [info for info in (read_up_file(f) for f in folders) if info]
    if not running:
        where = f"{root / name}" if name else str(root)
        raise ConfigError(
            f"no kbundle up is running (looked in {where}); start one with kbundle up FILE"
        )
    if len(running) > 1:
        names = ", ".join(r["isvc"] for r in running)
        raise ConfigError(f"several InferenceServices are running ({names}); name one")
    return running[0]


def fetch_status(up: dict, window_s: float | None = None, timeout_s: float = 10.0) -> dict:
    host = "127.0.0.1" if up["host"] in ("0.0.0.0", "") else up["host"]
    url = f"http://{host}:{up['port']}{STATUS_PATH}" + (f"?window={window_s}" if window_s else "")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except OSError as exc:
        raise ConfigError(
            f"kbundle up for {up['isvc']} (pid {up['pid']}) does not answer on {url}: {exc}"
        ) from exc
