"""gRPC server A/B on one pinned core, one command: grpc.aio, grpcio's sync server and kbundle's
lean server (kbundle.serving.grpc_lean), same run.

`python bench/grpc_ab.py [--seconds 5] [--rounds 2]` measures, interleaved round by round:
- echo: a trivial unary handler (raw bytes in, a fixed 40-byte answer out, no model) on
  grpc.aio, on the sync server with a stock ThreadPoolExecutor (FIFO) and on the sync server
  with kbundle's HandlerPool (kbundle.serving.grpc_pool), 16 threads each, on the lean server's
  connection layer, and on the h2 library (the HTTP/2 library the lean server does not use);
- ModelInfer: the kbundle predictor (tiny and MLP, no flags but intra_op_threads 1) with
  KBUNDLE_GRPC_SERVER=aio, sync + fifo pool, sync + lifo pool, lean (the default).
Each server is pinned to SERVER_CPU with taskset; the load is closed-loop grpc.aio callers in
`--clients` processes pinned to CLIENT_CPU (bench/overload.py's client). Reported per cell: answers/s,
p50/p99, the server's CPU per answered call (from /proc: independent of how fast the client is)
and the client core's use (near 100 %: the client, not the server, was the limit). Writes
bench/results/grpc_ab.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import overload  # noqa: E402
from machine import cpu_model  # noqa: E402
from profile_grpc import build_model  # noqa: E402

ECHO_ANSWER = b"\x0a\x04echo\x1a\x02id"  # a ModelInferResponse: model_name, id
VARIANTS = ("aio", "sync-fifo", "sync-lifo", "lean")
ECHO_VARIANTS = (*VARIANTS, "h2lib")  # h2lib: the h2 library's HTTP/2 state machine, echo only
THREADS = 16


# -- the echo server (run as `grpc_ab.py --serve-echo VARIANT --port N`) -----------------------
def echo_handler(asynchronous: bool):
    import grpc

    async def answer_async(request: bytes, context) -> bytes:
        return ECHO_ANSWER

    def answer(request: bytes, context) -> bytes:
        return ECHO_ANSWER

    behavior = answer_async if asynchronous else answer
    method = grpc.unary_unary_rpc_method_handler(behavior)  # no (de)serializers: raw bytes
    return grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": method}
    )


def serve_echo(variant: str, port: int) -> None:
    import grpc

    from kbundle.serving.grpc_pool import HandlerPool

    if variant == "aio":
        asyncio.run(_serve_aio(port))
        return
    if variant in ("lean", "h2lib"):
        import uvloop

        uvloop.run(_serve_lean(port) if variant == "lean" else _serve_h2lib(port))
        return
    pool = futures.ThreadPoolExecutor(THREADS) if variant == "sync-fifo" else HandlerPool(THREADS)
    server = grpc.server(pool, handlers=(echo_handler(False),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


async def _serve_aio(port: int) -> None:
    from grpc import aio

    server = aio.server(handlers=(echo_handler(True),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# -- the A/B -----------------------------------------------------------------------------------
class EchoSink:
    """The lean server's connection layer with a fixed answer: its framing cost alone."""

    max_message_bytes = 1 << 20
    max_header_bytes = 32 * 1024

    def admit(self, call):
        return None

    def dispatch(self, call) -> None:
        call.conn.respond(call, ECHO_ANSWER)

    def settled(self, call) -> None:
        pass

    def closed(self, conn) -> None:
        pass


async def _serve_lean(port: int) -> None:
    from kbundle.serving.grpc_lean_conn import H2Connection

    sink = EchoSink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: H2Connection(sink), "127.0.0.1", port)
    await server.serve_forever()


async def _serve_h2lib(port: int) -> None:
    """The same echo on the `h2` library (python-hyper): why the lean server frames by hand."""
    import h2.config
    import h2.connection
    import h2.events

    prefix = b"\x00" + len(ECHO_ANSWER).to_bytes(4, "big")

    class Echo(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            config = h2.config.H2Configuration(client_side=False, header_encoding=None)
            self.transport, self.conn = transport, h2.connection.H2Connection(config)
            self.conn.initiate_connection()
            transport.write(self.conn.data_to_send())

        def data_received(self, data: bytes) -> None:
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, h2.events.StreamEnded):
                    sid = event.stream_id
                    self.conn.send_headers(
                        sid, [(":status", "200"), ("content-type", "application/grpc")]
                    )
                    self.conn.send_data(sid, prefix + ECHO_ANSWER)
                    self.conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)
            self.transport.write(self.conn.data_to_send())

    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", port)
    await server.serve_forever()


def start_echo(args, variant: str, log: Path) -> tuple[subprocess.Popen, int]:
    from procs import free_port

    port = free_port()
    cmd = ["taskset", "-c", args.server_cpu, sys.executable, __file__, "--serve-echo", variant]
    proc = subprocess.Popen([*cmd, "--port", str(port)], stdout=log.open("wb"), stderr=-2)
    deadline = time.monotonic() + 30
    while not _port_open(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"echo server {variant} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    return proc, port


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_predictor(args, variant: str, model: str, model_dir: Path, log: Path):
    server, _, pool = variant.partition("-")
    pa = argparse.Namespace(
        model=model, server_cpu=args.server_cpu, server=server, pool=pool or "lifo"
    )
    import profile_grpc

    proc, _http, port = profile_grpc.start(pa, model_dir, log)
    return proc, port


def cell(args, proc, port: int, work, concurrency: int) -> dict:
    url = f"127.0.0.1:{port}"
    overload.drive(args, url, work, overload.Load(min(concurrency, 8), 1.0))  # warm
    figures, _ = overload.measured(
        args, url, work, proc.pid, overload.Load(concurrency, args.seconds)
    )
    rate = max(figures["answers_per_s"], 1e-9)
    figures["server_cpu_us_per_call"] = round(figures["server_cpu_pct"] / 100 / rate * 1e6, 1)
    return figures


def run_round(args, root: Path, models: dict, rows: list[dict]) -> None:
    echo_work = [(b"\x0a\x04echo", None)]
    for variant in ECHO_VARIANTS:
        proc, port = start_echo(args, variant, root / f"echo-{variant}.log")
        try:
            for c in args.concurrency:
                rows.append(
                    {
                        "load": "echo",
                        "variant": variant,
                        "c": c,
                        **cell(args, proc, port, echo_work, c),
                    }
                )
        finally:
            proc.terminate()
            proc.wait(30)
    for model, (model_dir, work) in models.items():
        for variant in VARIANTS:
            log = root / f"{model}-{variant}.log"
            proc, port = start_predictor(args, variant, model, model_dir, log)
            try:
                for c in args.concurrency:
                    rows.append(
                        {
                            "load": model,
                            "variant": variant,
                            "c": c,
                            **cell(args, proc, port, work, c),
                        }
                    )
            finally:
                proc.terminate()
                proc.wait(30)


def table(rows: list[dict]) -> list[str]:
    """Median over rounds per (load, variant, concurrency)."""
    keys = sorted(
        {(r["load"], r["c"], r["variant"]) for r in rows},
        key=lambda k: (k[0], k[1], ECHO_VARIANTS.index(k[2])),
    )
    lines = [
        "| load | c | server | answers/s | p50 ms | p99 ms | server CPU µs/call | client CPU | rounds (answers/s) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for load, c, variant in keys:
        cells = [r for r in rows if (r["load"], r["c"], r["variant"]) == (load, c, variant)]
        med = {
            k: statistics.median(r[k] for r in cells)
            for k in (
                "answers_per_s",
                "p50_ms",
                "p99_ms",
                "server_cpu_us_per_call",
                "client_cpu_pct",
            )
        }
        lines.append(
            f"| {load} | {c} | {variant} | {med['answers_per_s']:.0f} | {med['p50_ms']:.2f} | "
            f"{med['p99_ms']:.2f} | {med['server_cpu_us_per_call']:.0f} | {med['client_cpu_pct']:.0f} % | "
            f"{', '.join(str(round(r['answers_per_s'])) for r in cells)} |"
        )
    return lines


def write(args, rows: list[dict], load_before: str, load_after: str) -> None:
    lines = [
        "# gRPC servers A/B on one core: grpc.aio, grpcio's sync server, the lean server",
        "",
        f"`python bench/grpc_ab.py --seconds {args.seconds:g} --rounds {args.rounds} --clients "
        f"{args.clients}`, {cpu_model()}, {os.cpu_count()} CPUs; load before: `{load_before}`, "
        f"after: `{load_after}`.",
        "",
        "Servers pinned to one core; the load comes from closed-loop grpc.aio callers in "
        f"{args.clients} processes pinned to the other core (Python clients: where the client CPU "
        "column nears 100 % the client was the limit, and the server CPU per call is the fairer "
        "comparison). echo = a raw-bytes handler answering a fixed message (no model); tiny / mlp "
        "= the kbundle predictor's ModelInfer (intra_op_threads 1). aio = grpc.aio server; "
        "sync-fifo = grpcio's sync server on a ThreadPoolExecutor; sync-lifo = the sync server on "
        "kbundle's HandlerPool; lean = kbundle's own HTTP/2 framing on the event loop "
        "(kbundle.serving.grpc_lean, the predictor's default); h2lib (echo only) = the same "
        "echo on the h2 library's HTTP/2 state machine. Medians over rounds; rounds interleave "
        "the variants.",
        "",
        *table(rows),
        "",
    ]
    out = HERE / "results" / "grpc_ab.md"
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--models", nargs="+", default=["tiny", "mlp"])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--serve-echo", choices=ECHO_VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_echo:
        serve_echo(args.serve_echo, args.port)
        return 0
    sys.path.insert(0, str(HERE.parent / "tests"))
    root = Path(tempfile.mkdtemp(prefix="grpc-ab-"))
    models = {m: build_model(root, m) for m in args.models}
    uptime = lambda: subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()  # noqa: E731
    before, rows = uptime(), []
    for _ in range(args.rounds):
        run_round(args, root, models, rows)
    write(args, rows, before, uptime())
    return 0


if __name__ == "__main__":
    sys.exit(main())
