"""A real Prometheus server for tests (Debian's `prometheus` package) on 127.0.0.1, scraping the
file_sd file `kbundle up` writes, every second."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from procs import free_port  # noqa: E402

CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: {rules}
scrape_configs:
  - job_name: kbundle
    honor_labels: true
    file_sd_configs:
      - files: ["{sd}"]
        refresh_interval: 1s
"""


@dataclass
class PromServer:
    proc: subprocess.Popen
    url: str
    log: Path

    def query(self, promql: str) -> list[dict]:
        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if not found:
        pytest.skip(
            "prometheus is not installed (Debian: apt-get install prometheus; "
            "scripts/system-deps.sh does it as root)"
        )
    return found


def start_prometheus(tmp: Path, sd_file: Path, rule_files: list[Path] = ()) -> PromServer:
    binary = prometheus_binary()
    config = tmp / "prometheus.yml"
    config.write_text(CONFIG.format(sd=sd_file, rules=json.dumps([str(p) for p in rule_files])))
    port = free_port()
    log = tmp / "prometheus.log"
    cmd = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = PromServer(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.stop()
    raise TimeoutError(f"prometheus not ready:\n{log.read_text()[-3000:]}")


def wait_for_series(prom: PromServer, promql: str, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = prom.query(promql)
        if found:
            return found
        time.sleep(0.5)
    raise TimeoutError(f"no series for {promql} in {timeout}s")
