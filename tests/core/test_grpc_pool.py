"""The gRPC handler pool (kbundle.serving.grpc_pool) under a real grpcio sync server on
127.0.0.1: calls whose deadline passes while they queue are never run, the newest call is served
first once the queue is congested, calls without a deadline always run, and the concurrent-call
bound follows the handler threads plus the models' max_queue_size."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import grpc
import pytest

from kbundle.serving.grpc_pool import HandlerPool
from kbundle.serving.grpc_sizing import grpc_max_calls, grpc_threads

SERVICE = "test.Pool"


class Recorder:
    """A raw-bytes unary handler that records each request it runs; b"block" waits for `gate`."""

    def __init__(self) -> None:
        self.ran: list[bytes] = []
        self.gate = threading.Event()
        self.started = threading.Event()

    def __call__(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"block":
            self.started.set()
            self.gate.wait(10)
        self.ran.append(request)
        return request


@pytest.fixture()
def served():
    """A one-thread HandlerPool server, its recorder, a stub and the pool."""
    pool = HandlerPool(1, lifo_after_s=0.02)
    recorder = Recorder()
    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(recorder)}
    )
    server = grpc.server(pool, handlers=(handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield recorder, channel.unary_unary(f"/{SERVICE}/Call"), pool
    recorder.gate.set()
    channel.close()
    server.stop(None)


def queue_behind_blocker(recorder: Recorder, call, payloads, timeout: float | None):
    """Block the only thread, then queue `payloads` in order; their futures."""
    blocker = call.future(b"block")
    assert recorder.started.wait(5)
    queued = []
    for payload in payloads:
        queued.append(call.future(payload, timeout=timeout))
        time.sleep(0.03)  # a distinct arrival order, and the oldest is past lifo_after_s
    return blocker, queued


def test_call_whose_deadline_passed_while_queued_is_never_run(served):
    recorder, call, pool = served
    blocker, (late,) = queue_behind_blocker(recorder, call, [b"late"], timeout=0.2)
    with pytest.raises(grpc.RpcError) as error:
        late.result(5)
    assert error.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    recorder.gate.set()
    assert blocker.result(5) == b"block"
    assert call(b"after", timeout=5) == b"after"  # the thread serves on
    assert recorder.ran == [b"block", b"after"]
    assert pool.expired == 1


def test_congested_queue_serves_the_newest_call_first(served):
    recorder, call, _pool = served
    blocker, queued = queue_behind_blocker(recorder, call, [b"1", b"2", b"3"], timeout=None)
    recorder.gate.set()
    assert [f.result(5) for f in queued] == [b"1", b"2", b"3"]  # every call without a deadline runs
    blocker.result(5)
    assert recorder.ran == [b"block", b"3", b"2", b"1"]


def test_uncongested_queue_stays_first_in_first_out():
    pool = HandlerPool(1, lifo_after_s=10.0)
    gate, order = threading.Event(), []
    pool.submit(gate.wait, 5)
    tickets = [pool.submit(order.append, n) for n in range(3)]
    gate.set()
    deadline = time.monotonic() + 5
    while not all(t.done() for t in tickets):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert order == [0, 1, 2]
    pool.shutdown()


def test_done_callback_added_after_the_call_finished_still_runs():
    pool = HandlerPool(1)
    ticket = pool.submit(lambda: None)
    while not ticket.done():
        time.sleep(0.001)
    seen = []
    ticket.add_done_callback(seen.append)
    assert seen == [ticket]
    pool.shutdown()


def model(max_queue_size: int) -> SimpleNamespace:
    return SimpleNamespace(max_queue_size=max_queue_size)


def test_concurrent_call_bound_is_threads_plus_the_largest_model_queue(monkeypatch):
    monkeypatch.delenv("KBUNDLE_GRPC_MAX_CALLS", raising=False)
    assert grpc_max_calls(16, [model(24), model(8)]) == 40
    assert grpc_max_calls(16, [model(24), model(0)]) is None  # an unbounded queue: no bound
    monkeypatch.setenv("KBUNDLE_GRPC_MAX_CALLS", "7")
    assert grpc_max_calls(16, [model(24)]) == 7


def test_handler_threads_cover_one_batch_running_and_one_filling(monkeypatch):
    monkeypatch.delenv("KBUNDLE_GRPC_THREADS", raising=False)
    floor = grpc_threads()  # 16 per CPU of the budget, no model
    big = SimpleNamespace(max_batch_size=floor, instances=2)
    assert grpc_threads([big]) == 4 * floor
    assert grpc_threads([SimpleNamespace(max_batch_size=0, instances=1)]) == floor  # unbatched
    monkeypatch.setenv("KBUNDLE_GRPC_THREADS", "5")
    assert grpc_threads([big]) == 5
