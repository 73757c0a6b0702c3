"""The lean gRPC server's header-block cache (kbundle.serving.hpack_repeat) against hpack itself:
the same headers for every block of a real encoder's stream, and the cache used only where that
is exact (blocks that leave the dynamic table as it was)."""

from __future__ import annotations

import random

import hpack

from kbundle.serving.hpack_repeat import RepeatDecoder

BASE = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/svc/ModelInfer")]
BASE += [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


class CountingDecoder(RepeatDecoder):
    """Counts the blocks that went to hpack's own decode."""

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size)
        self.decoded = 0
        inner = self._decoder.decode

        def decode(block: bytes, raw: bool = False) -> list:
            self.decoded += 1
            return inner(block, raw=raw)

        self._decoder.decode = decode


def test_a_stream_of_blocks_decodes_as_hpack_does_and_repeats_skip_hpack():
    rng = random.Random(7)
    encoder, reference, cached = hpack.Encoder(), hpack.Decoder(), CountingDecoder(65536)
    blocks = 0
    for step in range(400):
        headers = list(BASE)
        if rng.random() < 0.5:  # a changing deadline, sent as a literal the table never holds
            timeout = f"{rng.choice([100, 250, 999])}m".encode()
            headers.append(hpack.NeverIndexedHeaderTuple(b"grpc-timeout", timeout))
        if rng.random() < 0.05:  # new metadata: indexed, so the table changes
            headers.append((b"x-request-id", str(step).encode()))
        if step == 300:  # the client shrinks its table: everything cached must go
            encoder.header_table_size = 64
        block = encoder.encode(headers, huffman=step % 100 < 50)
        assert cached.decode(block) == reference.decode(block, raw=True)
        blocks += 1
    assert cached.decoded < blocks / 2  # most blocks were repeats answered from the cache


def test_a_block_that_changes_the_table_is_never_taken_from_the_cache():
    encoder, cached = hpack.Encoder(), CountingDecoder(65536)
    first = encoder.encode(BASE)  # literals with indexing: adds entries
    second = encoder.encode(BASE)  # the same headers as references into the table
    cached.decode(first)
    cached.decode(second)
    cached.decode(second)
    assert cached.decoded == 2  # the repeat of `second` came from the cache
    again = hpack.Encoder().encode(BASE)  # `first`'s bytes again: it would add entries again
    assert again == first
    assert cached.decode(again) == hpack.Decoder().decode(first, raw=True)
    assert cached.decoded == 3
