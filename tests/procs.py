"""THE test harness for real server processes: free ports, start, wait for readiness, stop (with
logs on failure). Predictors, transformers, `kbundle up` (tests/up/up_harness.py builds on it)
and helper servers all start through `launch` and wait through `wait_until`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
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
    stop_timeout_s = 15.0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float | None = None) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(self.stop_timeout_s if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch(cmd: Sequence[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `cmd` with stdout and stderr into `log_path` (extra `env` on top of ours)."""
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    what: str,
    proc: subprocess.Popen | None = None,
    log_path: Path | None = None,
) -> None:
    """Poll `check` until True; fail early (with the log tail) if `proc` exits, or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}:\n{_tail(log_path)}")
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what}: not reached in {timeout}s\n{_tail(log_path)}")


def _tail(log_path: Path | None) -> str:
    return log_path.read_text(errors="replace")[-4000:] if log_path else ""


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def wait_http(
    url: str, proc: subprocess.Popen | None, log_path: Path | None, timeout: float = 60
) -> None:
    """Poll `url` until it answers 200; fail early (with the log) if the process dies."""
    wait_until(lambda: http_ok(url), timeout, f"{url} ready", proc, log_path)


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
    proc = launch(cmd, log_path, env)
    server = ServerProcess(proc, log_path, http_port, grpc_port)
    if ready_path is not None:
        try:
            wait_http(f"http://127.0.0.1:{http_port}{ready_path}", proc, log_path, timeout)
        except Exception:
            server.stop()
            raise
    return server


def predictor_cmd(model: str, model_dir: Path, *args: str) -> list[str]:
    """`python -m kbundle.predictors --model_name MODEL --model_dir DIR args...`."""
    return [
        sys.executable,
        "-m",
        "kbundle.predictors",
        "--model_name",
        model,
        "--model_dir",
        str(model_dir),
        *args,
    ]


def run_to_exit(
    cmd: Sequence[str], timeout: float = 120, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `cmd` (a server expected to refuse to start) to its exit, output captured as text."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def error_lines(stderr: str) -> list[str]:
    """The one-line `error:` messages in a process's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def start_predictor(
    model: str, model_dir: Path, log_path: Path, *args: str, **kwargs
) -> ServerProcess:
    """The kbundle predictor serving `model` from `model_dir`, ready (start_module's keywords)."""
    return start_module(
        "kbundle.predictors",
        ["--model_name", model, "--model_dir", str(model_dir), *args],
        log_path,
        f"/v2/models/{model}/ready",
        **kwargs,
    )


def start_transformer(
    model: str,
    model_dir: Path,
    predictor_host: str,
    protocol: str,
    log_path: Path,
    *args: str,
    **kwargs,
) -> ServerProcess:
    """The kbundle transformer for `model`, hopping to `predictor_host` over `protocol`, ready."""
    return start_module(
        "kbundle.transformers",
        [
            *("--model_name", model, "--model_dir", str(model_dir)),
            *("--predictor_host", predictor_host, "--predictor_protocol", protocol),
            *args,
        ],
        log_path,
        f"/v2/models/{model}/ready",
        **kwargs,
    )


def drained(
    server: ServerProcess, sent: float, wait_s: float, threads=(), join_s: float = 60
) -> tuple[int, float]:
    """After a SIGTERM sent at `sent` (monotonic): join the calling threads, then wait for the
    server to exit. Returns (its exit code, seconds since the signal)."""
    for thread in threads:
        thread.join(join_s)
    code = server.proc.wait(wait_s)
    return code, time.monotonic() - sent
