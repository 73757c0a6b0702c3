"""Fixtures: the local HTTP server, a moto S3 server, and a sandboxed storage-init runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from procs import free_port, wait_http  # noqa: E402
from storage_sandbox import Sandbox  # noqa: E402
from storage_servers import ModelHTTPServer  # noqa: E402


@pytest.fixture(scope="session")
def www(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("www")


@pytest.fixture(scope="session")
def http_server(www: Path):
    server = ModelHTTPServer(www)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """moto's standalone S3 server on 127.0.0.1 (a real HTTP endpoint boto3 talks to):
    (url, its access log, where every request it served is a line)."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/moto-api/", proc, log_path, timeout=60)
        yield url, log_path
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    (tmp_path / "dest").mkdir()
    return Sandbox(tmp_path)


@pytest.fixture(scope="session")
def s3_endpoint(s3_server) -> str:
    return s3_server[0]
