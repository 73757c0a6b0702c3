"""How long a gRPC refusal takes as the client sees it, next to an answer, on the lean server.

`python bench/refusal_latency.py [--seconds 4]`: the lean server's connection layer
(kbundle.serving.grpc_lean_conn) pinned to SERVER_CPU, refusing every second call when its headers
arrive (RESOURCE_EXHAUSTED, as a full queue is) and answering the others with a fixed message;
closed-loop grpc.aio callers on CLIENT_CPU. Both kinds cost the server about the same, so where the
two latencies match, the time is the client's (its event loop delivering completions), not the
server's refusal path. Writes bench/results/refusal_latency.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from machine import cpu_model  # noqa: E402

RESOURCE_EXHAUSTED = 8


async def serve(port: int) -> None:
    import grpc_ab

    from kbundle.serving.grpc_lean_conn import H2Connection

    class HalfRefused(grpc_ab.EchoSink):
        calls = 0

        def admit(self, call):
            HalfRefused.calls += 1
            return (RESOURCE_EXHAUSTED, "queue full", b"") if HalfRefused.calls % 2 else None

    sink, loop = HalfRefused(), asyncio.get_running_loop()
    server = await loop.create_server(lambda: H2Connection(sink), "127.0.0.1", port)
    await server.serve_forever()


async def drive(port: int, concurrency: int, seconds: float) -> tuple[list[float], list[float]]:
    from grpc import aio

    answered, refused = [], []
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        stop = time.monotonic() + seconds

        async def caller() -> None:
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    await call(b"\x0a\x04echo", timeout=1)
                    answered.append(time.perf_counter() - started)
                except aio.AioRpcError:
                    refused.append(time.perf_counter() - started)

        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return answered, refused


def pct(values: list[float], q: float) -> float:
    return 1000 * sorted(values)[min(len(values) - 1, int(len(values) * q))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve))
        return 0
    from procs import free_port

    port = free_port()
    cmd = ["taskset", "-c", args.server_cpu, sys.executable, __file__, "--serve", str(port)]
    server = subprocess.Popen(cmd)
    time.sleep(2)
    os.sched_setaffinity(0, {args.client_cpu})
    lines = [
        "# gRPC refusal latency at the client, lean server (bench/refusal_latency.py)",
        "",
        f"`python bench/refusal_latency.py --seconds {args.seconds:g}`, {cpu_model()}, "
        f"{os.cpu_count()} CPUs; server pinned to CPU {args.server_cpu}, grpc.aio callers to CPU "
        f"{args.client_cpu}. Every second call is refused with RESOURCE_EXHAUSTED on its headers.",
        "",
        "| c | answered | p50 / p99 ms | refused | p50 / p99 ms |",
        "|---:|---:|---|---:|---|",
    ]
    try:
        for concurrency in (1, 32, 128):
            ok, no = asyncio.run(drive(port, concurrency, args.seconds))
            lines.append(
                f"| {concurrency} | {len(ok)} | {pct(ok, 0.5):.2f} / {pct(ok, 0.99):.2f} | "
                f"{len(no)} | {pct(no, 0.5):.2f} / {pct(no, 0.99):.2f} |"
            )
    finally:
        server.kill()
    out = HERE / "results" / "refusal_latency.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
