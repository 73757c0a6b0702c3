"""storage-init against moto's S3 server through the real boto3 / kserve-storage path.

moto stands in for a cloud bucket (none is reachable from tests); the client side is the real
kserve-storage S3 code with an endpoint URL, as KServe's S3 secret configures it.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import boto3
import pytest
from archive_makers import hostile_tar, tar_of_dir
from procs import free_port
from storage_sandbox import S3_ENV, Sandbox, install_model
from storage_servers import model_tree, tree


@pytest.fixture(scope="module")
def bucket(
    s3_endpoint: str, sample_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Bucket `models`: digits/v1 and v2 as prefixes, a tampered copy, a good and a hostile archive."""
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        **{
            "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": "us-east-1",
        },
    )
    s3.create_bucket(Bucket="models")
    work = tmp_path_factory.mktemp("s3src")
    for version in ("v1", "v2"):
        for item in (sample_models / "digits" / version).iterdir():
            s3.upload_file(str(item), "models", f"digits/{version}/{item.name}")
    for item in (sample_models / "digits" / "v1").iterdir():
        data = item.read_bytes() + (b"\0" if item.name == "model.onnx" else b"")
        s3.put_object(Bucket="models", Key=f"tampered/v1/{item.name}", Body=data)
    archive = tar_of_dir(sample_models / "digits" / "v1", work / "digits.tar.gz")
    s3.upload_file(str(archive), "models", "archives/digits.tar.gz")
    s3.upload_file(
        str(hostile_tar(work / "evil.tar.gz", "dotdot")), "models", "archives/evil.tar.gz"
    )
    return {"archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest()}


def s3_env(endpoint: str) -> dict[str, str]:
    return {**S3_ENV, "AWS_ENDPOINT_URL": endpoint}


def test_s3_prefix_model(sandbox: Sandbox, s3_endpoint, bucket, sample_models: Path) -> None:
    result = sandbox.run("s3://models/digits/v1", str(sandbox.dest), env=s3_env(s3_endpoint))
    assert result.rc == 0, result.log
    assert model_tree(sandbox.dest) == tree(sample_models / "digits" / "v1")
    assert "files verified" in result.log
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in result.log
    assert sandbox.outside_dest() == {}


def test_s3_endpoint_from_kserve_secret_vars(
    sandbox: Sandbox, s3_endpoint, bucket, sample_models: Path
) -> None:
    """KServe's S3 secret annotations become S3_ENDPOINT + S3_USE_HTTPS=0 in the init container."""
    env = {**S3_ENV, "S3_ENDPOINT": s3_endpoint.removeprefix("http://"), "S3_USE_HTTPS": "0"}
    result = sandbox.run("s3://models/digits/v2", str(sandbox.dest), env=env)
    assert result.rc == 0, result.log
    assert model_tree(sandbox.dest) == tree(sample_models / "digits" / "v2")


def test_s3_archive_with_digest(sandbox: Sandbox, s3_endpoint, bucket, sample_models: Path) -> None:
    uri = f"s3://models/archives/digits.tar.gz#sha256={bucket['archive_sha256']}"
    result = sandbox.run(uri, str(sandbox.dest), env=s3_env(s3_endpoint))
    assert result.rc == 0, result.log
    assert model_tree(sandbox.dest) == tree(sample_models / "digits" / "v1")


def test_s3_checksum_mismatch_keeps_previous_model(
    sandbox: Sandbox, s3_endpoint, bucket, sample_models
) -> None:
    install_model(sample_models / "digits" / "v2", sandbox.dest)
    before = tree(sandbox.dest)
    result = sandbox.run("s3://models/tampered/v1", str(sandbox.dest), env=s3_env(s3_endpoint))
    assert result.rc == 12 and "model.onnx: sha256" in result.last_line, result.log
    assert tree(sandbox.dest) == before and sandbox.outside_dest() == {}


def test_s3_hostile_archive_is_not_unpacked_by_kserve_storage(
    sandbox: Sandbox, s3_endpoint, bucket
) -> None:
    result = sandbox.run(
        "s3://models/archives/evil.tar.gz", str(sandbox.dest), env=s3_env(s3_endpoint)
    )
    assert result.rc == 13 and "escapes the model directory" in result.last_line, result.log
    assert tree(sandbox.dest) == {} and sandbox.outside_dest() == {}
    assert not list(sandbox.root.rglob("evil.txt"))


def test_s3_missing_prefix_is_clear(sandbox: Sandbox, s3_endpoint, bucket) -> None:
    result = sandbox.run("s3://models/nope/v9", str(sandbox.dest), env=s3_env(s3_endpoint))
    assert result.rc == 10 and "No model found" in result.last_line, result.log
    assert tree(sandbox.dest) == {}


def test_local_directory_is_copied_not_symlinked(
    sandbox: Sandbox, sample_models: Path, tmp_path: Path
) -> None:
    src = tmp_path / "pvc" / "digits"
    shutil.copytree(sample_models / "digits" / "v1", src)
    for uri in (f"file://{src}", str(src)):
        result = sandbox.run(uri, str(sandbox.dest))
        assert result.rc == 0, result.log
        assert model_tree(sandbox.dest) == tree(src)
        assert not any(p.is_symlink() for p in sandbox.dest.rglob("*"))
    (src / "model.onnx").write_bytes(b"changed at the source")
    assert (sandbox.dest / "model.onnx").read_bytes() != b"changed at the source"


def test_s3_unreachable_endpoint_is_retried_then_clear(sandbox: Sandbox) -> None:
    """Connection refused is transient: retried, then one clear line and the transient exit code;
    a DEST it made is removed."""
    env = {
        **S3_ENV,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "KBUNDLE_STORAGE_RETRIES": "2",
    }
    result = sandbox.run("s3://models/digits/v1", str(sandbox.dest), env=env)
    assert result.rc == 20, result.log
    assert "attempt 1 failed" in result.log
    assert (
        "Could not connect" in result.last_line and "gave up after 2 attempts" in result.last_line
    )
    assert S3_ENV["AWS_SECRET_ACCESS_KEY"] not in result.log
    assert not sandbox.dest.exists() and sandbox.outside_dest() == {}


def test_s3_missing_bucket_fails_fast_with_not_found(sandbox: Sandbox, s3_endpoint) -> None:
    result = sandbox.run("s3://no-such-bucket/m", str(sandbox.dest), env=s3_env(s3_endpoint))
    assert result.rc == 10, result.log
    assert "NoSuchBucket" in result.last_line and "(exit 10, not-found)" in result.last_line
    assert "retrying" not in result.log and not sandbox.dest.exists()
