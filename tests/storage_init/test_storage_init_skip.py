"""No download when DEST already holds a verified copy of the same, unchanged source.

The second run on an unchanged source must transfer nothing (the test server counts the body
bytes it serves); a changed source, or a DEST changed since, is fetched and swapped in.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from pathlib import Path

import pytest
from storage_sandbox import Sandbox
from storage_servers import big_block, model_tree, tree

MB100 = 100 * 1000 * 1000


def model_tar(out: Path, files: dict[str, bytes]) -> Path:
    """An uncompressed .tar of `files` plus their SHA256SUMS."""
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items())
    with tarfile.open(out, "w") as tar:
        for name, data in {**files, "SHA256SUMS": sums.encode()}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture
def source(www: Path, request: pytest.FixtureRequest) -> Path:
    return model_tar(www / f"skip-{request.node.name}.tar", {"model.onnx": b"version 1"})


def test_unchanged_source_transfers_nothing_and_changed_one_is_swapped_in(
    sandbox: Sandbox, http_server, source: Path
) -> None:
    url, path = f"{http_server.url}/files/{source.name}", f"/files/{source.name}"
    first = sandbox.run(url, str(sandbox.dest))
    assert first.rc == 0, first.log
    served, installed = http_server.sent[path], tree(sandbox.dest)
    assert served == source.stat().st_size

    second = sandbox.run(url, str(sandbox.dest))
    assert second.rc == 0, second.log
    assert http_server.sent[path] == served  # bytes served by the second run: 0
    assert "unchanged at the source" in second.log and "nothing transferred" in second.log
    assert tree(sandbox.dest) == installed  # DEST exactly as it was, record included

    time.sleep(0.01)  # a new mtime: a new ETag
    model_tar(source, {"model.onnx": b"version 2, longer"})
    third = sandbox.run(url, str(sandbox.dest))
    assert third.rc == 0, third.log
    assert http_server.sent[path] == served + source.stat().st_size
    assert (sandbox.dest / "model.onnx").read_bytes() == b"version 2, longer"


def test_dest_changed_since_is_fetched_again(sandbox: Sandbox, http_server, source: Path) -> None:
    url, path = f"{http_server.url}/files/{source.name}", f"/files/{source.name}"
    assert sandbox.run(url, str(sandbox.dest)).rc == 0
    (sandbox.dest / "model.onnx").write_bytes(b"edited in place")
    result = sandbox.run(url, str(sandbox.dest))
    assert result.rc == 0, result.log
    assert "changed since it was fetched" in result.log
    assert http_server.sent[path] == 2 * source.stat().st_size
    assert (sandbox.dest / "model.onnx").read_bytes() == b"version 1"


def test_other_source_into_the_same_dest_is_fetched(
    sandbox: Sandbox, http_server, source: Path, www: Path
) -> None:
    other = model_tar(www / "skip-other.tar", {"model.onnx": b"other model"})
    assert sandbox.run(f"{http_server.url}/files/{source.name}", str(sandbox.dest)).rc == 0
    result = sandbox.run(f"{http_server.url}/files/{other.name}", str(sandbox.dest))
    assert result.rc == 0 and "holds another source" in result.log, result.log
    assert (sandbox.dest / "model.onnx").read_bytes() == b"other model"


def test_pinned_digest_skips_without_any_request(
    sandbox: Sandbox, http_server, source: Path
) -> None:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    url, path = f"{http_server.url}/files/{source.name}#sha256={digest}", f"/files/{source.name}"
    assert sandbox.run(url, str(sandbox.dest)).rc == 0
    hits = http_server.hits[path]
    result = sandbox.run(url, str(sandbox.dest))
    assert result.rc == 0 and "same #sha256" in result.log, result.log
    assert http_server.hits[path] == hits  # not even a conditional request


def test_skip_can_be_switched_off(sandbox: Sandbox, http_server, source: Path) -> None:
    url, path = f"{http_server.url}/files/{source.name}", f"/files/{source.name}"
    assert sandbox.run(url, str(sandbox.dest)).rc == 0
    result = sandbox.run(url, str(sandbox.dest), env={"KBUNDLE_STORAGE_SKIP_UNCHANGED": "false"})
    assert result.rc == 0, result.log
    assert http_server.sent[path] == 2 * source.stat().st_size


def test_cold_start_saving_on_a_100_mb_model(sandbox: Sandbox, http_server, www: Path) -> None:
    """Scale-from-zero onto a volume that already holds the model: first run vs second run."""
    weights = b"".join(big_block(i) for i in range(MB100 // len(big_block(0)) + 1))[:MB100]
    archive = model_tar(www / "model-100mb.tar", {"weights.bin": weights, "config.json": b"{}"})
    del weights
    url, path = f"{http_server.url}/files/{archive.name}", f"/files/{archive.name}"
    timings = []
    for _ in range(2):
        start = time.monotonic()
        result = sandbox.run(url, str(sandbox.dest))
        timings.append(time.monotonic() - start)
        assert result.rc == 0, result.log
    assert http_server.sent[path] == archive.stat().st_size  # the second run served no byte
    assert model_tree(sandbox.dest)["weights.bin"] == tree(sandbox.dest)["weights.bin"]
    print(
        f"\ncold start, 100 MB model over local HTTP: first run {timings[0]:.2f} s, "
        f"second run {timings[1]:.2f} s, saved {timings[0] - timings[1]:.2f} s "
        f"(load {os.getloadavg()[0]:.2f})"
    )
    assert timings[1] < timings[0]
