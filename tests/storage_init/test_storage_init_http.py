"""storage-init against a real local HTTP server: good models, integrity, retries, re-runs."""

from __future__ import annotations

import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from archive_makers import tar_of_dir, zip_of_dir
from storage_sandbox import Sandbox, install_model
from storage_servers import model_tree, tree


@pytest.fixture(scope="module")
def published(www: Path, sample_models: Path) -> dict[str, Path]:
    """digits v1/v2 as .tar.gz and .zip, plus a tampered copy whose SHA256SUMS no longer matches."""
    v1, v2 = sample_models / "digits" / "v1", sample_models / "digits" / "v2"
    tampered = www / "tampered-src"
    shutil.copytree(v1, tampered)
    with open(tampered / "model.onnx", "ab") as f:
        f.write(b"\0")
    (www / "v1.onnx").write_bytes((v1 / "model.onnx").read_bytes())
    return {
        "v1": v1,
        "v2": v2,
        "v1.tar.gz": tar_of_dir(v1, www / "v1.tar.gz"),
        "v2.tgz": tar_of_dir(v2, www / "v2.tgz"),
        "v1.zip": zip_of_dir(v1, www / "v1.zip"),
        "tampered.tar.gz": tar_of_dir(tampered, www / "tampered.tar.gz"),
    }


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_failed_cleanly(sb: Sandbox, result, before: dict[str, str], words: str) -> None:
    """Non-zero exit, a last line saying what failed, DEST as it was, nothing written elsewhere."""
    assert result.rc != 0, result.log
    assert "storage-init failed" in result.last_line and words in result.last_line, result.log
    assert "What to do" in result.last_line
    assert tree(sb.dest) == before
    assert sb.outside_dest() == {}


@pytest.mark.parametrize("name", ["v1.tar.gz", "v1.zip"])
def test_archive_model_is_unpacked_and_verified(
    sandbox: Sandbox, http_server, published, name
) -> None:
    result = sandbox.run(f"{http_server.url}/files/{name}", str(sandbox.dest))
    assert result.rc == 0, result.log
    assert model_tree(sandbox.dest) == tree(
        published["v1"]
    )  # exactly the model: no archive, no staging
    listed = (published["v1"] / "SHA256SUMS").read_text().splitlines()
    assert f"SHA256SUMS: {len(listed)} files verified" in result.log, result.log
    assert sandbox.outside_dest() == {}


def test_single_file_with_uri_digest(sandbox: Sandbox, http_server, published) -> None:
    digest = sha(published["v1"] / "model.onnx")
    result = sandbox.run(f"{http_server.url}/files/v1.onnx#sha256={digest}", str(sandbox.dest))
    assert result.rc == 0, result.log
    assert sha(sandbox.dest / "v1.onnx") == digest
    assert f"sha256 matches {digest}" in result.log


def test_uri_digest_mismatch_is_refused(sandbox: Sandbox, http_server, published) -> None:
    install_model(published["v2"], sandbox.dest)
    before = tree(sandbox.dest)
    result = sandbox.run(f"{http_server.url}/files/v1.tar.gz#sha256={'0' * 64}", str(sandbox.dest))
    assert_failed_cleanly(sandbox, result, before, "does not match the expected")


def test_sha256sums_mismatch_is_refused(sandbox: Sandbox, http_server, published) -> None:
    install_model(published["v1"], sandbox.dest)
    before = tree(sandbox.dest)
    result = sandbox.run(f"{http_server.url}/files/tampered.tar.gz", str(sandbox.dest))
    assert_failed_cleanly(sandbox, result, before, "model.onnx: sha256")


def test_rerun_replaces_previous_model_without_leftovers(
    sandbox: Sandbox, http_server, published
) -> None:
    assert sandbox.run(f"{http_server.url}/files/v1.tar.gz", str(sandbox.dest)).rc == 0
    (sandbox.dest / "stale-extra-file.txt").write_text("from an older model")
    result = sandbox.run(f"{http_server.url}/files/v2.tgz", str(sandbox.dest))
    assert result.rc == 0, result.log
    assert model_tree(sandbox.dest) == tree(published["v2"])
    again = sandbox.run(f"{http_server.url}/files/v2.tgz", str(sandbox.dest))
    assert again.rc == 0 and model_tree(sandbox.dest) == tree(published["v2"])


def test_500_then_200_is_retried(sandbox: Sandbox, http_server, published) -> None:
    result = sandbox.run(f"{http_server.url}/flaky/t500/v1.tar.gz", str(sandbox.dest))
    assert result.rc == 0, result.log
    assert "attempt 1 failed (HTTP 500)" in result.log
    assert http_server.hits["/flaky/t500/v1.tar.gz"] == 2
    assert model_tree(sandbox.dest) == tree(published["v1"])


def test_connection_dropped_once_resumes(sandbox: Sandbox, http_server, published) -> None:
    result = sandbox.run(f"{http_server.url}/dropfirst/tdrop/v1.tar.gz", str(sandbox.dest))
    assert result.rc == 0, result.log
    assert "attempt 1 failed" in result.log
    assert model_tree(sandbox.dest) == tree(published["v1"])


def test_truncated_download_fails_after_retries(sandbox: Sandbox, http_server, published) -> None:
    install_model(published["v2"], sandbox.dest)
    before = tree(sandbox.dest)
    result = sandbox.run(
        f"{http_server.url}/drop/v1.tar.gz", str(sandbox.dest), env={"KBUNDLE_STORAGE_RETRIES": "3"}
    )
    assert_failed_cleanly(sandbox, result, before, "gave up after 3 attempts")


def test_html_login_page_is_refused(sandbox: Sandbox, http_server) -> None:
    result = sandbox.run(f"{http_server.url}/html/model.onnx", str(sandbox.dest))
    assert_failed_cleanly(sandbox, result, {}, "HTML page")


def test_missing_file_is_a_clear_404(sandbox: Sandbox, http_server) -> None:
    result = sandbox.run(f"{http_server.url}/files/nope.tar.gz", str(sandbox.dest))
    assert_failed_cleanly(sandbox, result, {}, "HTTP 404")


def test_headers_secret_is_sent_but_never_logged(sandbox: Sandbox, http_server, published) -> None:
    secret = "Bearer s3cr3t-token-value"
    result = sandbox.run(
        f"{http_server.url}/files/v1.tar.gz?X-Amz-Signature=sig-value-42",
        str(sandbox.dest),
        env={"127.0.0.1-headers": f'{{"Authorization": "{secret}"}}'},
    )
    assert result.rc == 0, result.log
    assert http_server.auth["/files/v1.tar.gz"] == secret
    assert "s3cr3t" not in result.log and "sig-value-42" not in result.log


def test_usage_errors_name_the_contract(sandbox: Sandbox) -> None:
    result = sandbox.run("only-one-arg")
    assert result.rc == 2 and "SRC_URI DEST_DIR" in result.last_line
    result = sandbox.run("ftp://host/model.onnx", str(sandbox.dest))
    assert result.rc == 2 and "unsupported storage URI" in result.last_line


def _start_big_fetch(sandbox: Sandbox, http_server) -> subprocess.Popen:
    """Start fetching a 2 GB generated file and return once bytes are landing in staging."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kbundle.storage_init",
            f"{http_server.url}/big/2000000000/model.bin",
            str(sandbox.dest),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    part = sandbox.dest / ".kbundle-staging" / "fetch" / "model.bin"
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert part.exists(), "the download never started"
    return proc


def test_sigterm_mid_download_leaves_previous_model(
    sandbox: Sandbox, http_server, published
) -> None:
    install_model(published["v1"], sandbox.dest)
    before = tree(sandbox.dest)
    proc = _start_big_fetch(sandbox, http_server)
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode != 0
    assert "stopped by a signal" in out.strip().splitlines()[-1]
    assert tree(sandbox.dest) == before


def test_sigkill_mid_download_is_cleaned_by_next_run(
    sandbox: Sandbox, http_server, published
) -> None:
    install_model(published["v1"], sandbox.dest)
    proc = _start_big_fetch(sandbox, http_server)
    proc.kill()
    proc.communicate(timeout=30)
    assert (sandbox.dest / ".kbundle-staging").exists()  # SIGKILL cannot clean up...
    assert {k for k in tree(sandbox.dest) if not k.startswith(".kbundle-staging")} == set(
        tree(published["v1"])
    )
    result = sandbox.run(f"{http_server.url}/files/v2.tgz", str(sandbox.dest))
    assert result.rc == 0, result.log
    assert "removing an unfinished download" in result.log  # ...the next run does
    assert model_tree(sandbox.dest) == tree(published["v2"])


def test_corrupt_archive_is_refused(sandbox: Sandbox, http_server, published, www: Path) -> None:
    data = published["v1.tar.gz"].read_bytes()
    (www / "cut.tar.gz").write_bytes(data[: len(data) // 2])  # an upload that was cut short
    install_model(published["v2"], sandbox.dest)
    before = tree(sandbox.dest)
    result = sandbox.run(f"{http_server.url}/files/cut.tar.gz", str(sandbox.dest))
    assert_failed_cleanly(sandbox, result, before, "not a valid archive or truncated")


def test_file_listed_in_sha256sums_but_missing_is_refused(
    sandbox: Sandbox, published, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    shutil.copytree(published["v1"], src)
    (src / "model-info.json").unlink()
    result = sandbox.run(str(src), str(sandbox.dest))
    assert_failed_cleanly(sandbox, result, {}, "lists 'model-info.json', which is not in the model")
    assert not sandbox.dest.exists()


def test_several_pairs_in_one_call(sandbox: Sandbox, http_server, published) -> None:
    other = sandbox.root / "dest" / "other"
    result = sandbox.run(
        f"{http_server.url}/files/v1.tar.gz", str(sandbox.dest),
        f"{http_server.url}/files/v2.tgz", str(other),
    )  # fmt: skip
    assert result.rc == 0, result.log
    assert model_tree(sandbox.dest) == tree(published["v1"]) and model_tree(other) == tree(
        published["v2"]
    )
    assert "2 model(s) ready" in result.last_line
