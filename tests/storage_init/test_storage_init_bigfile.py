"""A 300 MiB file fetched with flat memory: the child's own peak RSS, measured with wait4()."""

from __future__ import annotations

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
        env={"KBUNDLE_STORAGE_PROGRESS_INTERVAL_S": "0.5"},
    )
    assert result.rc == 0, result.log
    assert (sandbox.dest / "model.bin").stat().st_size == BIG
    print(
        f"peak RSS: {baseline.max_rss_mib:.0f} MiB for 4 MiB, {result.max_rss_mib:.0f} MiB for 300 MiB"
    )
    assert result.max_rss_mib - baseline.max_rss_mib < 32, (
        baseline.max_rss_mib,
        result.max_rss_mib,
    )
    assert "ETA" in result.log and "MiB/s" in result.log  # periodic progress lines (not a TTY)
