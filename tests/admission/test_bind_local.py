"""`kbundle up` components listen on 127.0.0.1 only (issue 12 item 7), read from /proc/net/tcp*.

kserve 0.21 hard-codes 0.0.0.0 / [::]; containers keep that, `kbundle up` sets KBUNDLE_BIND_HOST.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "up"))

from up_harness import HERE, start_up  # noqa: E402

LISTEN = "0A"
# 127.0.0.1, ::ffff:127.0.0.1 (grpc's dual-stack socket bound to 127.0.0.1) and ::1.
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def listening(port: int) -> list[str]:
    """Local addresses (hex, as the kernel writes them) of LISTEN sockets on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                address, hex_port = fields[1].split(":")
                if fields[3] == LISTEN and int(hex_port, 16) == port:
                    found.append(address)
    return found


@pytest.fixture(scope="module")
def up(tmp_path_factory, sample_models: Path):
    proc = start_up(HERE / "digits-transformer.yaml", tmp_path_factory.mktemp("up-bind"))
    yield proc
    proc.stop()


def test_up_components_listen_on_loopback_only(up):
    [revision] = up.status()["revisions"]
    ports = [
        (c["label"], p) for c in revision["components"] for p in (c["http_port"], c["grpc_port"])
    ]
    assert len(ports) == 4
    for label, port in ports:
        addresses = listening(port)
        assert addresses, (label, port)
        assert set(addresses) <= LOOPBACK, (label, port, addresses)
