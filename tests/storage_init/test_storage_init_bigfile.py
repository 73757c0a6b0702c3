"""A 300 MiB file fetched with flat memory: the initializer's own peak RSS (VmHWM, which it logs;
wait4's ru_maxrss would also count the pytest parent's pages resident at fork time)."""

from __future__ import annotations

import re

from storage_sandbox import Sandbox
from storage_servers import big_sha256

BIG = 300 * 1024 * 1024
SMALL = 4 * 1024 * 1024


def test_large_file_is_streamed_with_flat_memory(sandbox: Sandbox, http_server, tmp_path) -> None:
    small = Sandbox(tmp_path / "small")
    (small.root / "dest").mkdir(parents=True)
    baseline = small.run(
        f"{http_server.url}/big/{SMALL}/model.bin#sha256={big_sha256(SMALL)}", str(small.dest)
    )
    assert baseline.rc == 0, baseline.log
    result = sandbox.run(
        f"{http_server.url}/big/{BIG}/model.bin#sha256={big_sha256(BIG)}",
        str(sandbox.dest),
        env={"KBUNDLE_STORAGE_PROGRESS_INTERVAL_S": "0.02"},
    )
    assert result.rc == 0, result.log
    assert (sandbox.dest / "model.bin").stat().st_size == BIG
    small_peak, big_peak = peak_mib(baseline.log), peak_mib(result.log)
    print(f"peak RSS: {small_peak} MiB for 4 MiB, {big_peak} MiB for 300 MiB")
    assert big_peak - small_peak < 32, (small_peak, big_peak)
    assert "ETA" in result.log and "MiB/s" in result.log  # periodic progress lines (not a TTY)


def peak_mib(log: str) -> int:
    found = re.search(r"peak memory (\d+) MiB", log)
    assert found, f"no peak memory line in:\n{log}"
    return int(found.group(1))
