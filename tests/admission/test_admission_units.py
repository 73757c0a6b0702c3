"""Pure pieces of admission control: settings → policy, deadlines, the cgroup-derived body limit."""

from __future__ import annotations

import time

import pytest

from kbundle.errors import InvalidRequest
from kbundle.predictors.admission import queue_policy
from kbundle.serving.limits import (
    DEFAULT_MAX_REQUEST_BYTES,
    TIMEOUT_HEADER,
    cgroup_memory_limit,
    max_request_bytes,
    request_deadline,
)
from kbundle.settings import resolve_settings


def test_max_request_rows_defaults_to_max_batch_size_and_0_means_none():
    assert queue_policy(resolve_settings({"max_batch_size": 8}, env={})).max_request_rows == 8
    assert queue_policy(resolve_settings({"max_request_rows": 0}, env={})).max_request_rows == 0


def test_the_earliest_deadline_counts():
    now = time.monotonic()
    deadline = request_deadline({"timeout": 50_000}, {TIMEOUT_HEADER: "200"})
    assert now + 0.04 < deadline < now + 0.2
    assert request_deadline({}, {}) is None


@pytest.mark.parametrize("bad", [-5, 0, "soon", 1.5, True])
def test_a_bad_timeout_parameter_is_400(bad):
    with pytest.raises(InvalidRequest, match="microseconds"):
        request_deadline({"timeout": bad}, {})


def test_body_limit_is_a_quarter_of_the_cgroup_memory_limit(tmp_path, monkeypatch):
    monkeypatch.delenv("KBUNDLE_MAX_REQUEST_BYTES", raising=False)
    monkeypatch.setenv("KBUNDLE_CGROUP_ROOT", str(tmp_path))
    (tmp_path / "memory.max").write_text("2147483648\n")  # the samples' 2 GiB
    assert cgroup_memory_limit() == 2 << 30
    assert max_request_bytes() == 512 << 20
    (tmp_path / "memory.max").write_text("max\n")
    assert max_request_bytes() == DEFAULT_MAX_REQUEST_BYTES
    (tmp_path / "memory.max").unlink()
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")  # cgroup v1
    assert max_request_bytes() == 256 << 20
    assert max_request_bytes(1000) == 1000
