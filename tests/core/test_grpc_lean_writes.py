"""When the lean gRPC connection writes its answers (kbundle.serving.grpc_lean_conn): answers due
in one loop turn share one write, but an answer with no other call open on its connection is
written at once (nothing could share that write; waiting a turn only adds latency)."""

from __future__ import annotations

import asyncio

import hpack

from kbundle.serving import h2_frames as h2
from kbundle.serving.grpc_lean_conn import H2Connection


class Transport:
    def __init__(self):
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return False


class Sink:
    max_message_bytes = 1 << 20
    max_header_bytes = 16384

    def __init__(self):
        self.dispatched = []

    def admit(self, call):
        return None

    def dispatch(self, call) -> None:
        self.dispatched.append(call)

    def settled(self, call) -> None:
        pass

    def closed(self, conn) -> None:
        pass


def two_calls() -> bytes:
    encoder = hpack.Encoder()
    headers = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/inference.GRPCInferenceService/ModelInfer"),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    data = h2.PREFACE + h2.settings_frame({})
    for stream in (1, 3):
        data += h2.frame(h2.HEADERS, h2.END_HEADERS, stream, encoder.encode(headers))
        data += h2.frame(h2.DATA, h2.END_STREAM, stream, h2.MESSAGE_PREFIX.pack(0, 0))
    return data


def test_answers_share_a_write_but_the_last_open_call_is_written_at_once():
    async def scenario() -> None:
        sink, transport = Sink(), Transport()
        conn = H2Connection(sink)
        conn.connection_made(transport)
        conn.data_received(two_calls())
        await asyncio.sleep(0)  # the settings and their ack leave in the next turn
        assert [call.stream for call in sink.dispatched] == [1, 3]
        first, second = sink.dispatched
        before = len(transport.writes)
        conn.respond(first, b"one")
        assert len(transport.writes) == before  # call 3 is open: its answer may share the write
        conn.respond(second, b"two")
        assert len(transport.writes) == before + 1  # the last open call: written now
        written = transport.writes[-1]
        assert b"one" in written and b"two" in written  # both answers, one write
        await asyncio.sleep(0)
        assert len(transport.writes) == before + 1  # nothing left for the scheduled flush

    asyncio.run(scenario())
