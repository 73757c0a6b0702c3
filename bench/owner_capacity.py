"""How many calls a second one engine owner of `--workers N` serves on a core of its own.

    python bench/owner_capacity.py [--models tiny mlp] [--in-flight 8 32 128] [--seconds 5]

Every call of every front-end worker crosses the one engine owner (its event loop, its batcher,
its engine), so the calls a second it serves on one core bound what any number of workers can
serve. On this 2-CPU machine the workers and perf_analyzer take the owner's CPU, and
bench/workers.py cannot show that bound. Here the real owner process
(`python -m kbundle.predictors.workers.owner`, started as the supervisor starts it) runs pinned
to CPU 0, and this driver, pinned to CPU 1, plays two front ends: it speaks the owner's control
protocol (kbundle.predictors.workers.wire) with a /dev/shm slab each (shm.Slab), as the workers
do, but with no HTTP or gRPC in front, and keeps a fixed number of batch-1 calls in flight.
Per cell: calls a second, the owner's CPU per call (user + system, /proc), mean rows per engine
call (kbundle_batch_size from the owner's multiprocess metrics) and the driver's own CPU load
(below 1.0 means the driver kept up and the owner was the limit). Writes
bench/results/owner_capacity.md (and .json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import models as bench_models  # noqa: E402
from run import machine  # noqa: E402
from workers import cpu_seconds, uptime  # noqa: E402

from kbundle.predictors.workers import wire  # noqa: E402
from kbundle.predictors.workers.shm import SHM_DIR, Slab, SlabSize  # noqa: E402

OWNER_CPU, DRIVER_CPU = 0, 1
# The owner as `--workers` starts it, and with every batch on its engine thread (the A/B for its
# derived engine_on_loop_ms: the front ends leave it one CPU, shared by its loop and engine).
VARIANTS = {"no flags": [], "--engine_on_loop_ms 0": ["--engine_on_loop_ms", "0"]}
LINKS = 2  # front ends played by the driver
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class FrontEnd:
    """One played worker: a slab whose every slot holds one batch-1 request, written once, and
    a connection that sends each slot's call again as soon as its reply arrives."""

    def __init__(self, index: int, window: int, width: int):
        size = SlabSize(slot_bytes=1 << 16, slots=window)
        self.slab = Slab(SHM_DIR / f"kbundle-{os.getpid()}-bench{index}", size, create=True)
        row = np.random.default_rng(index).standard_normal((1, width)).astype(np.float32)
        self.descs = [self.slab.write(slot, {"input": row}) for slot in range(window)]
        self.slot_of: dict[int, int] = {}
        self.seq, self.replies, self.failures = 0, 0, 0

    async def connect(self, path: str) -> None:
        self.reader, self.writer = await asyncio.open_unix_connection(path)
        size = self.slab.size
        self.writer.write(wire.frame((str(self.slab.path), size.slot_bytes, size.slots)))
        await wire.receive_async(self.reader)  # the owner's signature: it is serving

    def _call(self, slot: int) -> bytes:
        seq, self.seq = self.seq, self.seq + 1
        self.slot_of[seq] = slot
        return wire.frame((seq, "bench", slot, self.descs[slot], None, None, None))

    async def run(self, stop: asyncio.Event) -> None:
        self.writer.write(b"".join(self._call(slot) for slot in range(len(self.descs))))
        frames = wire.Frames()
        while not stop.is_set():
            data = await self.reader.read(1 << 20)
            if not data:
                raise ConnectionError("the engine owner closed the connection")
            again = []
            for seq, ok, *_ in frames.feed(data):
                self.replies += 1
                self.failures += not ok
                again.append(self._call(self.slot_of.pop(seq)))
            self.writer.write(b"".join(again))  # one write per read, as a worker's tick flush

    def close(self) -> None:
        self.writer.close()
        self.slab.unlink()


def batch_stats(folder: str, model: str) -> tuple[float, float]:
    """(sum, count) of the owner's kbundle_batch_size, read from its multiprocess files."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry, folder)
    found = {"sum": 0.0, "count": 0.0}
    for metric in registry.collect():
        if metric.name != "kbundle_batch_size":
            continue
        for sample in metric.samples:
            kind = sample.name.rsplit("_", 1)[-1]
            if kind in found and sample.labels.get("model") == model:
                found[kind] += sample.value
    return found["sum"], found["count"]


def driver_cpu() -> float:
    return sum(os.times()[:2])


async def measure(args, owner: subprocess.Popen, socket_path: str, model: str, in_flight: int):
    width = bench_models.INPUT_WIDTH[model]
    fronts = [FrontEnd(i, in_flight // LINKS, width) for i in range(LINKS)]
    stop = asyncio.Event()
    try:
        for front in fronts:
            await front.connect(socket_path)
        tasks = [asyncio.create_task(front.run(stop)) for front in fronts]
        await asyncio.sleep(args.warmup)
        replies = sum(f.replies for f in fronts)
        batches, cpu = batch_stats(args.metrics, model), cpu_seconds(owner.pid)[0]
        started, mine = time.monotonic(), driver_cpu()
        await asyncio.sleep(args.seconds)
        wall = time.monotonic() - started
        calls = sum(f.replies for f in fronts) - replies
        cpu = cpu_seconds(owner.pid)[0] - cpu
        batch_sum, batch_count = (
            b - a for a, b in zip(batches, batch_stats(args.metrics, model), strict=True)
        )
        mine = (driver_cpu() - mine) / wall
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for front in fronts:
            front.close()
    return {
        "model": model,
        "in_flight": in_flight,
        "calls_per_s": round(calls / wall),
        "owner_cpu_us_per_call": 1e6 * cpu / calls,
        "mean_batch": batch_sum / batch_count if batch_count else 0.0,
        "driver_cpu": mine,
        "failures": sum(f.failures for f in fronts),
    }


def start_owner(
    args, model: str, model_dir: Path, flags: list[str], socket_path: str, log: Path
) -> subprocess.Popen:
    env = {**os.environ, wire.SOCKET_ENV: socket_path, MULTIPROC_ENV: args.metrics}
    env.pop("KBUNDLE_WORKERS", None)
    cmd = [
        "taskset", "-c", str(OWNER_CPU), args.python, "-m", "kbundle.predictors.workers.owner",
        "--model_name", model, "--model_dir", str(model_dir), "--workers", str(LINKS), *flags,
    ]  # fmt: skip
    owner = subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not Path(socket_path).exists():  # the owner renames its socket in once warmed up
        if owner.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the engine owner did not start: see {log}")
        time.sleep(0.1)
    return owner


def run_cells(args, dirs: dict[str, Path]) -> list[dict]:
    cells = []
    for model in args.models:
        for variant, flags in VARIANTS.items():
            with tempfile.TemporaryDirectory(prefix="kbundle-owner-bench-") as tmp:
                args.metrics = str(Path(tmp, "metrics"))
                os.mkdir(args.metrics)
                socket_path = str(Path(tmp, "owner.sock"))
                log = Path(args.work) / f"owner-{model}.log"
                owner = start_owner(args, model, dirs[model], flags, socket_path, log)
                try:
                    for in_flight in args.in_flight:
                        cell = asyncio.run(measure(args, owner, socket_path, model, in_flight))
                        cell["owner"] = variant
                        print(cell, flush=True)
                        cells.append(cell)
                finally:
                    owner.terminate()
                    owner.wait(30)
    return cells


def write(args, cells: list[dict], load_before: str, load_after: str) -> None:
    info = machine()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "owner_capacity.json").write_text(
        json.dumps({"machine": info, "cells": cells}, indent=1)
    )
    lines = [
        "# One engine owner on one core",
        "",
        f"Command: `python bench/owner_capacity.py --models {' '.join(args.models)} --in-flight "
        f"{' '.join(map(str, args.in_flight))} --seconds {args.seconds}`",
        "",
        f"Machine: {info['cpu']}, {info['cpus']} CPUs (hypervisor {info['hypervisor']}), "
        f"kernel {info['kernel']}, Python {info['python']}.",
        f"Load (`uptime`) before: {load_before}; after: {load_after}.",
        "",
        f"The engine owner of `--workers` (the real process, started with `--workers {LINKS}` and no "
        f"other flag but the model's) runs pinned to CPU {OWNER_CPU}; the driver, pinned to CPU {DRIVER_CPU}, plays "
        f"{LINKS} front ends over the owner's control socket and /dev/shm slabs, keeping the given "
        "number of batch-1 calls in flight (half on each), with no HTTP or gRPC in front. So the "
        "calls a second here are what one owner serves on one core: the most any number of "
        "workers can get through it. Owner CPU: user + system time of the owner process per call. "
        "Driver CPU: the driver's CPU time over wall time (below 1.0: it kept up, the owner was "
        "the limit). Each model's owner is also run with `--engine_on_loop_ms 0` (every batch "
        "on its engine thread, as before the owner derived that setting from the one CPU the "
        "front ends leave it).",
        "",
        "| model | owner started with | calls in flight | calls/s | owner CPU µs / call "
        "| mean batch | driver CPU | refused |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(
            f"| {c['model']} | {c['owner']} | {c['in_flight']} | {c['calls_per_s']:,.0f} "
            f"| {c['owner_cpu_us_per_call']:.1f} | {c['mean_batch']:.1f} | {c['driver_cpu']:.2f} "
            f"| {c['failures']} |"
        )
    (out / "owner_capacity.md").write_text("\n".join([*lines, ""]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--models", nargs="+", default=["tiny", "mlp"], choices=list(bench_models.BUILDERS)
    )
    parser.add_argument("--in-flight", nargs="+", type=int, default=[8, 32, 128])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    default_python = ROOT / ".venv/bin/python"
    parser.add_argument(
        "--python",
        default=str(default_python) if default_python.exists() else sys.executable,
        help="interpreter that runs the owner (default: the project's .venv, else this one)",
    )
    parser.add_argument("--work", default=str(HERE / ".work"))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        print("needs 2 CPUs: one for the owner, one for the driver", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {DRIVER_CPU})
    Path(args.work).mkdir(parents=True, exist_ok=True)
    dirs = bench_models.build_all(HERE / ".models")
    load_before = uptime()
    cells = run_cells(args, dirs)
    write(args, cells, load_before, uptime())
    print((Path(args.out) / "owner_capacity.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
