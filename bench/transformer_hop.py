"""What the transformer hop adds: p50/p99 latency of client -> transformer -> predictor minus
client -> predictor, per hop protocol (gRPC raw tensors, REST binary), 64-float tensor.

    .venv/bin/python bench/transformer_hop.py [--requests 2000] [--write bench/results/transformer_hop.md]

Real processes on 127.0.0.1: the digits sample predictor (FP32 [1, 64] in) and two transformers
with a pass-through spec (kind: tensor), so the difference is the hop itself: one more V2 server
plus one V2 client call, nothing of pre-processing. Requests are sequential (latency, not
throughput) and round-robin over the targets, so machine noise hits all of them alike.
Target (issue 5): <= 1 ms p50 added on gRPC.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from machine import cpu_model  # noqa: E402
from procs import start_module  # noqa: E402

from kbundle import samples  # noqa: E402

PASSTHROUGH_SPEC = """\
inputs:
  - {kind: tensor, name: input, datatype: FP32, shape: [-1, 64]}
outputs:
  - {kind: tensor, tensor: probabilities, datatype: FP32}
"""


def start_servers(tmp: Path, model_dir: Path):
    spec_dir = tmp / "spec"
    spec_dir.mkdir()
    (spec_dir / "transformer.yaml").write_text(PASSTHROUGH_SPEC)
    predictor = start_module(
        "kbundle.predictors",
        ["--model_name", "digits", "--model_dir", str(model_dir)],
        tmp / "predictor.log",
        "/v2/models/digits/ready",
    )
    servers = {"predictor": predictor}
    for hop, host in (("grpc-v2", predictor.grpc_url), ("v2", predictor.http_url)):
        args = [
            "--model_name",
            "digits",
            "--model_dir",
            str(spec_dir),
            "--predictor_host",
            host,
            "--predictor_protocol",
            hop,
        ]
        servers[hop] = start_module(
            "kbundle.transformers", args, tmp / f"t-{hop}.log", "/v2/models/digits/ready"
        )
    return servers


def grpc_call(url: str, data: np.ndarray):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("input", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    outputs = [grpcclient.InferRequestedOutput("probabilities")]
    return lambda: client.infer("digits", [tensor], outputs=outputs)


def rest_call(url: str, data: np.ndarray):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("input", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=True)
    outputs = [httpclient.InferRequestedOutput("probabilities", binary_data=True)]
    return lambda: client.infer("digits", [tensor], outputs=outputs)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(calls: dict[str, object], requests: int, warmup: int, pids: dict[str, int]):
    """Wall time per call (round-robin), and each server's CPU time over the timed loop."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    times = {name: np.empty(requests) for name in calls}
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    for i in range(requests):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name][i] = time.perf_counter() - start
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    return times, cpu


def report(times: dict[str, np.ndarray], cpu: dict[str, float], requests: int) -> str:
    ms = {
        name: (np.percentile(t, 50) * 1e3, np.percentile(t, 99) * 1e3) for name, t in times.items()
    }
    lines = [
        "| client | path | p50 ms | p99 ms | added p50 ms | added p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for client in ("grpc", "rest"):
        direct = ms[f"{client} direct"]
        lines.append(
            f"| {client} | direct to predictor | {direct[0]:.3f} | {direct[1]:.3f} | – | – |"
        )
        for hop in ("grpc-v2", "v2"):
            p50, p99 = ms[f"{client} via {hop}"]
            lines.append(
                f"| {client} | transformer, hop {hop} | {p50:.3f} | {p99:.3f} | "
                f"**{p50 - direct[0]:+.3f}** | {p99 - direct[1]:+.3f} |"
            )
    # Each transformer serves 2 of the paths (gRPC and REST clients): its CPU per request.
    lines += [
        "",
        "| server | CPU ms per request (user+sys, over the timed loop) |",
        "|---|---|",
        f"| predictor (serves all 6 paths) | {cpu['predictor'] * 1e3 / (6 * requests):.3f} |",
    ]
    for hop in ("grpc-v2", "v2"):
        lines.append(f"| transformer, hop {hop} | {cpu[hop] * 1e3 / (2 * requests):.3f} |")
    return "\n".join(lines)


def machine() -> str:
    cpu = cpu_model()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{os.cpu_count()} CPU ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}, load avg {load:.1f} at start"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--write", type=Path, help="write the results as markdown here")
    args = parser.parse_args()
    model_dir = samples.build_all() / "digits" / "v1"
    data = np.random.default_rng(0).uniform(0, 16, size=(1, 64)).astype(np.float32)
    where = machine()
    with tempfile.TemporaryDirectory() as tmp:
        servers = start_servers(Path(tmp), model_dir)
        try:
            calls = {}
            for client, make in (("grpc", grpc_call), ("rest", rest_call)):
                url_of = (lambda s: s.grpc_url) if client == "grpc" else (lambda s: s.http_url)
                calls[f"{client} direct"] = make(url_of(servers["predictor"]), data)
                for hop in ("grpc-v2", "v2"):
                    calls[f"{client} via {hop}"] = make(url_of(servers[hop]), data)
            pids = {name: server.proc.pid for name, server in servers.items()}
            times, cpu = measure(calls, args.requests, args.warmup, pids)
        finally:
            for server in servers.values():
                server.stop()
    table = report(times, cpu, args.requests)
    text = (
        "# Transformer hop latency\n\n"
        f"`{' '.join(['python', 'bench/transformer_hop.py', *sys.argv[1:]])}`: {args.requests} sequential "
        "requests per path (round-robin), 64-float FP32 tensor [1, 64], digits predictor, pass-through "
        "transformer spec. *Added* = via the transformer minus direct to the predictor, same client.\n\n"
        f"Machine: {where}; client, transformers and predictor share it.\n\n{table}\n"
    )
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
