"""A real `kbundle up` process for tests: start, read its status, edit its file, send V2 requests.
Started and waited for by the one harness, tests/procs.py."""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

import procs  # noqa: E402
from procs import ServerProcess, free_port  # noqa: E402


@dataclass(kw_only=True)
class UpProcess(ServerProcess):
    manifest: Path
    state_root: Path
    stop_timeout_s = 60.0

    @property
    def port(self) -> int:
        return self.http_port

    @property
    def rest_url(self) -> str:
        return self.http_url

    def status(self, window: float | None = None) -> dict:
        query = f"?window={window}" if window else ""
        with urllib.request.urlopen(
            f"http://{self.rest_url}/kbundle/status{query}", timeout=10
        ) as resp:
            return json.loads(resp.read())

    def traffic(self) -> dict[str, int]:
        return {r["name"]: r["traffic"] for r in self.status()["revisions"]}

    def write(self, doc: dict) -> None:
        """Replace the manifest atomically, as an editor's save does (the watcher never sees half)."""
        tmp = self.manifest.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.replace(tmp, self.manifest)

    def read(self) -> dict:
        return yaml.safe_load(self.manifest.read_text())


def kbundle_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "kbundle.cli", *args]


def up_cmd(manifest: Path, state: Path, port: int, grpc_port: int, *extra: str) -> list[str]:
    """`kbundle up MANIFEST` on the given ports and state folder, component output to log files."""
    ports = ["--port", str(port), "--grpc-port", str(grpc_port)]
    return kbundle_cmd("up", str(manifest), *ports, "--state-dir", str(state), "--quiet", *extra)


def start_up(manifest_src: Path, tmp: Path, *extra: str, timeout: float = 120) -> UpProcess:
    """Copy `manifest_src` into `tmp`, run `kbundle up` on it, wait until it serves."""
    manifest = tmp / manifest_src.name
    manifest.write_text(manifest_src.read_text())
    port, grpc_port = free_port(), free_port()
    state_root = tmp / "state"
    log_path = tmp / "up.log"
    cmd = up_cmd(manifest, state_root, port, grpc_port, "--watch-interval", "0.2", *extra)
    proc = procs.launch(cmd, log_path)
    up = UpProcess(proc, log_path, port, grpc_port, manifest=manifest, state_root=state_root)
    try:
        procs.wait_until(_serving(up), timeout, "kbundle up serving", proc, log_path)
    except Exception:
        up.stop(signal.SIGKILL)
        raise
    return up


def _serving(up: UpProcess) -> Callable[[], bool]:
    return lambda: procs.http_ok(f"http://{up.rest_url}/kbundle/status")


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, up: UpProcess | None = None
) -> None:
    """`procs.wait_until` for a running `kbundle up` (its log tail on failure)."""
    procs.wait_until(check, timeout, what, None, up.log_path if up else None)


def digits_rows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Held-out digit images as the model's FP32 [n, 64] input, with their true labels."""
    from kbundle.samples import digits_split

    _, test = digits_split()
    idx = np.random.default_rng(seed).choice(len(test.labels), n, replace=False)
    return test.images[idx].reshape(n, 64).astype(np.float32), test.labels[idx]


def infer_json(
    up: UpProcess, rows: np.ndarray, model: str = "digits", timeout: float = 60, session=None
) -> tuple[dict, dict]:
    """Raw V2 JSON through the ingress; returns (response headers, body). A `requests.Session`
    reuses one connection (keep-alive); without it each request opens its own."""
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(rows.shape),
                    "data": rows.ravel().tolist(),
                }
            ]
        }
    ).encode()
    url = f"http://{up.rest_url}/v2/models/{model}/infer"
    headers = {"Content-Type": "application/json"}
    if session is not None:
        resp = session.post(url, data=body, headers=headers, timeout=timeout)
        resp.raise_for_status()
        return {k.lower(): v for k, v in resp.headers.items()}, resp.json()
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return {k.lower(): v for k, v in resp.headers.items()}, json.loads(resp.read())


def revision_of(headers: dict, body: dict) -> str:
    """The revision that answered; header and V2 model_version must agree."""
    revision = headers.get("x-kbundle-revision")
    assert revision == body.get("model_version"), (headers, body.get("model_version"))
    return revision


def http_error(exc: urllib.error.HTTPError) -> str:
    return f"{exc.code} {exc.read().decode(errors='replace')}"
