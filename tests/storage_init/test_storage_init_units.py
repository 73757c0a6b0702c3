"""Small pure pieces: URI parsing and redaction, SHA256SUMS parsing, settings, progress lines."""

from __future__ import annotations

import io

import pytest

from kbundle.storage_init import checksums, delegated, progress, uris
from kbundle.storage_init.config import StorageSettings
from kbundle.storage_init.errors import IntegrityError, UsageError


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("s3://b/m", "s3"),
        ("gs://b/m", "delegated"),
        ("hf://org/model", "delegated"),
        ("https://acct.blob.core.windows.net/c/m", "delegated"),
        ("https://host/m.tar.gz", "http"),
        ("http://host/m.onnx", "http"),
        ("file:///mnt/pvc/m", "local"),
        ("/mnt/pvc/m", "local"),
    ],
)
def test_transport_is_picked_from_the_uri(uri: str, kind: str) -> None:
    assert uris.parse_source(uri).kind == kind


def test_sha256_fragment_is_split_off() -> None:
    digest = "ab" * 32
    source = uris.parse_source(f"s3://b/m.tar.gz#sha256={digest.upper()}")
    assert source.uri == "s3://b/m.tar.gz" and source.sha256 == digest


@pytest.mark.parametrize("uri", ["https://h/m.tgz#md5=abc", "pvc://claim/m", "ftp://h/m"])
def test_unsupported_uris_are_usage_errors(uri: str) -> None:
    with pytest.raises(UsageError):
        uris.parse_source(uri)


def test_redact_drops_userinfo_and_query() -> None:
    text = uris.redact("https://user:pw@host:8443/m.onnx?X-Amz-Signature=abc#sha256=00")
    assert text == "https://host:8443/m.onnx?<redacted>"


def test_sums_parser_accepts_sha256sum_output_and_refuses_escapes() -> None:
    digest = "0" * 64
    assert checksums.parse_sums(f"{digest}  model.onnx\n{digest} *./sub/w.bin\n") == [
        (digest, "model.onnx"),
        (digest, "sub/w.bin"),
    ]
    with pytest.raises(IntegrityError, match="leaves the model directory"):
        checksums.parse_sums(f"{digest}  ../../etc/passwd\n")
    with pytest.raises(IntegrityError, match="line 1"):
        checksums.parse_sums("not a sum line\n")


def test_settings_from_env_with_clear_errors() -> None:
    assert StorageSettings.from_env({"KBUNDLE_STORAGE_RETRIES": "2"}).retries == 2
    with pytest.raises(UsageError, match="KBUNDLE_STORAGE_MAX_FILES"):
        StorageSettings.from_env({"KBUNDLE_STORAGE_MAX_FILES": "many"})


def test_s3_endpoint_convention() -> None:
    env = {"S3_ENDPOINT": "minio.svc:9000", "S3_USE_HTTPS": "0"}
    delegated.apply_s3_env_conventions(env)
    assert env["AWS_ENDPOINT_URL"] == "http://minio.svc:9000"
    env = {"S3_ENDPOINT": "minio:9000", "AWS_ENDPOINT_URL": "https://explicit"}
    delegated.apply_s3_env_conventions(env)
    assert env["AWS_ENDPOINT_URL"] == "https://explicit"


def test_tty_progress_shows_rate_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", err)
    bar = progress.Progress("model.bin", 100 * progress.MIB, interval_s=10, tty=True)
    bar.interval = 0
    bar.update(25 * progress.MIB)
    assert "25.0 MiB of 100.0 MiB (25%)" in err.getvalue() and "ETA" in err.getvalue()
    assert err.getvalue().startswith("\r")


def test_new_settings_parse_and_refuse_nonsense() -> None:
    settings = StorageSettings.from_env(
        {"KBUNDLE_STORAGE_SKIP_UNCHANGED": "false", "KBUNDLE_STORAGE_DEADLINE_S": "2.5"}
    )
    assert settings.skip_unchanged is False and settings.retry_policy().deadline_s == 2.5
    with pytest.raises(UsageError, match="KBUNDLE_STORAGE_SKIP_UNCHANGED"):
        StorageSettings.from_env({"KBUNDLE_STORAGE_SKIP_UNCHANGED": "maybe"})
    with pytest.raises(UsageError, match="KBUNDLE_STORAGE_PARALLEL must be at least 1"):
        StorageSettings.from_env({"KBUNDLE_STORAGE_PARALLEL": "0"})


def test_non_utf8_sha256sums_is_an_integrity_error(tmp_path) -> None:
    (tmp_path / "SHA256SUMS").write_bytes(b"\xff" * 3)
    with pytest.raises(IntegrityError, match=r"SHA256SUMS is not UTF-8 text \(byte 0"):
        checksums.verify_model(tmp_path)
