"""Real server processes for tests: free ports, start, wait for readiness, stop (with logs on failure)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    log_path: Path
    http_port: int
    grpc_port: int

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def wait_http(
    url: str, proc: subprocess.Popen | None, log_path: Path | None, timeout: float = 60
) -> None:
    """Poll `url` until it answers 200; fail early (with the log) if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            log = log_path.read_text(errors="replace") if log_path else ""
            raise RuntimeError(
                f"process exited with {proc.returncode} before ready:\n{log[-4000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    log = log_path.read_text(errors="replace") if log_path else ""
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{log[-4000:]}")


def start_module(
    module: str,
    args: list[str],
    log_path: Path,
    ready_path: str | None,
    env: dict | None = None,
    http_port: int | None = None,
    grpc_port: int | None = None,
    timeout: float = 60,
) -> ServerProcess:
    """Start `python -m module --http_port P --grpc_port Q args...` and wait for `ready_path`."""
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    cmd = [
        sys.executable,
        "-m",
        module,
        "--http_port",
        str(http_port),
        "--grpc_port",
        str(grpc_port),
        *args,
    ]
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    server = ServerProcess(proc, log_path, http_port, grpc_port)
    if ready_path is not None:
        try:
            wait_http(f"http://127.0.0.1:{http_port}{ready_path}", proc, log_path, timeout)
        except Exception:
            server.stop()
            raise
    return server
