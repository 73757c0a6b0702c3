"""Multi-file S3 sources: bounded parallel transfers, one total progress line, flat memory, and
no transfer at all when the listing (keys, sizes, ETags) is unchanged (moto's S3 server)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import boto3
import pytest
from storage_sandbox import S3_ENV, Sandbox, install_model
from storage_servers import big_block, model_tree, tree
from test_storage_init_bigfile import peak_mib

FILES, SIZE = 20, 5 * 1024 * 1024


def client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )


@pytest.fixture(scope="module")
def shards(s3_endpoint: str) -> dict[str, bytes]:
    """Bucket `shards`: `llm/` 20 weight shards of 5 MiB, `one/` a single small file, `evil/` a
    key with a reserved name."""
    s3 = client(s3_endpoint)
    s3.create_bucket(Bucket="shards")
    blobs = {}
    for i in range(FILES):
        data = b"".join(big_block(i * 10 + j) for j in range(SIZE // len(big_block(0))))
        blobs[f"model-{i:05d}-of-{FILES:05d}.bin"] = data
        s3.put_object(Bucket="shards", Key=f"llm/{list(blobs)[-1]}", Body=data)
    s3.put_object(Bucket="shards", Key="one/config.json", Body=b"{}")
    s3.put_object(Bucket="shards", Key="evil/model.onnx", Body=b"x")
    s3.put_object(Bucket="shards", Key="evil/.kbundle-previous/model.onnx", Body=b"x")
    return blobs


def gets(log_path: Path, prefix: str) -> int:
    """Object GETs moto served under `prefix` (its access log has one line per request)."""
    return len(re.findall(rf'"GET /shards/{re.escape(prefix)}[^?" ]+ HTTP', log_path.read_text()))


def test_twenty_files_in_parallel_with_flat_memory(
    sandbox: Sandbox, s3_server, shards: dict[str, bytes], tmp_path: Path
) -> None:
    url, log_path = s3_server
    env = {**S3_ENV, "AWS_ENDPOINT_URL": url, "KBUNDLE_STORAGE_PROGRESS_INTERVAL_S": "0.05"}
    small = Sandbox(tmp_path / "small")
    (small.root / "dest").mkdir(parents=True)
    baseline = small.run("s3://shards/one", str(small.dest), env=env)
    assert baseline.rc == 0, baseline.log

    result = sandbox.run(
        "s3://shards/llm", str(sandbox.dest), env={**env, "KBUNDLE_STORAGE_PARALLEL": "8"}
    )
    assert result.rc == 0, result.log
    assert set(model_tree(sandbox.dest)) == set(shards)
    for name, data in shards.items():
        assert (sandbox.dest / name).read_bytes() == data
    assert gets(log_path, "llm/") == FILES
    # One progress line for the whole source, with the total of all 20 files.
    assert re.search(rf"s3://shards/llm \({FILES} files\): [\d.]+ MiB of 100.0 MiB", result.log)
    base, peak = peak_mib(baseline.log), peak_mib(result.log)
    print(f"\npeak memory: {base} MiB for 1 small file, {peak} MiB for {FILES} x 5 MiB, 8 at once")
    assert peak - base < 48, (base, peak)  # ~ parallel x chunk, not the 100 MiB of the model

    again = sandbox.run("s3://shards/llm", str(sandbox.dest), env=env)
    assert again.rc == 0 and "nothing transferred" in again.log, again.log
    assert gets(log_path, "llm/") == FILES  # the second run listed, and fetched no object


def test_reserved_key_under_the_prefix_is_refused_before_any_transfer(
    sandbox: Sandbox, s3_server, shards: dict[str, bytes], digits_v1: Path
) -> None:
    url, log_path = s3_server
    install_model(digits_v1, sandbox.dest)
    before = tree(sandbox.dest)
    env = {**S3_ENV, "AWS_ENDPOINT_URL": url}
    result = sandbox.run("s3://shards/evil", str(sandbox.dest), env=env)
    assert result.rc == 13, result.log
    assert "'.kbundle-previous'" in result.last_line and "reserved" in result.last_line
    assert gets(log_path, "evil/") == 0  # refused from the listing, before any object GET
    assert tree(sandbox.dest) == before


def test_reupload_with_new_etags_but_same_sha256sums_is_not_fetched(
    sandbox: Sandbox, s3_server, shards: dict[str, bytes]
) -> None:
    """A multipart re-upload changes every ETag, not the content: the model's SHA256SUMS (one
    small GET), listing every other object, says so. A real change is fetched."""
    url, log_path = s3_server
    s3 = client(url)
    files = {"model.onnx": b"weights", "model-info.json": b"{}"}
    sums = "".join(f"{hashlib.sha256(d).hexdigest()}  {n}\n" for n, d in files.items())
    files["SHA256SUMS"] = sums.encode()
    for name, data in files.items():
        s3.put_object(Bucket="shards", Key=f"resums/{name}", Body=data)
    env = {**S3_ENV, "AWS_ENDPOINT_URL": url}
    assert sandbox.run("s3://shards/resums", str(sandbox.dest), env=env).rc == 0
    fetched = gets(log_path, "resums/")
    for name, data in files.items():  # same bytes, multipart: ETag "<md5 of md5s>-1"
        upload = s3.create_multipart_upload(Bucket="shards", Key=f"resums/{name}")
        part = s3.upload_part(
            Bucket="shards", Key=f"resums/{name}", UploadId=upload["UploadId"],
            PartNumber=1, Body=data,
        )  # fmt: skip
        s3.complete_multipart_upload(
            Bucket="shards", Key=f"resums/{name}", UploadId=upload["UploadId"],
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]},
        )  # fmt: skip
    result = sandbox.run("s3://shards/resums", str(sandbox.dest), env=env)
    assert result.rc == 0 and "nothing transferred" in result.log, result.log
    assert gets(log_path, "resums/") == fetched + 1  # SHA256SUMS only

    files["model-info.json"] = b"[]"  # same size, new content, and its new line in SHA256SUMS
    sums = "".join(
        f"{hashlib.sha256(files[n]).hexdigest()}  {n}\n" for n in ("model.onnx", "model-info.json")
    )
    s3.put_object(Bucket="shards", Key="resums/model-info.json", Body=files["model-info.json"])
    s3.put_object(Bucket="shards", Key="resums/SHA256SUMS", Body=sums.encode())
    result = sandbox.run("s3://shards/resums", str(sandbox.dest), env=env)
    assert result.rc == 0 and "nothing transferred" not in result.log, result.log
    assert (sandbox.dest / "model-info.json").read_bytes() == b"[]"
