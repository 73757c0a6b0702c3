"""This tree against an earlier revision, interleaved: one command, one core.

`.venv/bin/python bench/revision_ab.py --base REV [--rounds 3] [--models mlp] [--protocols http]
[--concurrency 32]` starts two kbundle predictors per model, both with no flags and pinned to
SERVER_CPU: one runs this working tree's code, the other REV's (its `src/kbundle`, `predictors/`,
`transformers/` and `storage-init/` from `git archive`, laid out as the `kbundle` package and put
first on PYTHONPATH; the same venv, so only kbundle's own code differs). perf_analyzer, pinned to
CLIENT_CPU, measures each cell on both back to back (which goes first alternates by round), round
after round, so both see the same minutes of this VM, whose speed moves by a third within an hour. Reported per cell and round:
infer/s, p50, the mean batch formed and the server's CPU per request; medians over the rounds.
Writes bench/results/revision_ab.md and .json (`--out` for another folder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH_VENV = Path(os.environ.get("BENCH_VENV", ROOT / ".bench-venv"))

import models as bench_models  # noqa: E402
import run  # noqa: E402
from engine_on_loop import interleaved  # noqa: E402
from workers import bench_env  # noqa: E402

# Folder on disk -> where it sits in the `kbundle` package (pyproject.toml's package-dir).
LAYOUT = {
    "src/kbundle": "kbundle",
    "predictors": "kbundle/predictors",
    "transformers": "kbundle/transformers",
    "storage-init": "kbundle/storage_init",
}


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def package_of(revision: str, into: Path) -> Path:
    """A folder holding REV's `kbundle` package, to put first on PYTHONPATH."""
    archive = into / "rev.tar"
    subprocess.run(
        ["git", "-C", str(ROOT), "archive", "-o", str(archive), revision, *LAYOUT],
        check=True,
    )
    tree = into / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    site = into / "site"
    for folder, package in LAYOUT.items():  # kbundle first: the others land inside it
        shutil.copytree(tree / folder, site / package, dirs_exist_ok=True)
    return site


def environment(pythonpath: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return env


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the git revision to compare against")
    parser.add_argument("--models", nargs="+", default=["mlp"])
    parser.add_argument("--protocols", nargs="+", default=["http", "grpc"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[32])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window-ms", type=int, default=1000)
    parser.add_argument("--server-cpu", default="0")
    parser.add_argument("--client-cpu", default="1")
    parser.add_argument("--perf-analyzer", default=str(BENCH_VENV / "bin/perf_analyzer"))
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    os.environ.update(bench_env(BENCH_VENV))  # perf_analyzer's CUDA runtime library
    args.work = tempfile.mkdtemp(prefix="kbundle-revision-ab-")
    base = git("rev-parse", "--short", args.base)
    head = git("rev-parse", "--short", "HEAD") + (
        " + changes" if git("status", "--porcelain") else ""
    )
    site = package_of(args.base, Path(args.work))
    models = bench_models.build_all(Path(args.work) / "models")
    before = run.machine()
    cells: dict[tuple, list[dict]] = {}
    for model in args.models:
        with contextlib.ExitStack() as stack:
            servers = {
                name: stack.enter_context(
                    run.pinned_server(
                        args, "kbundle", model, models[model], f"{log}-{model}.log", env=env
                    )
                )
                for name, log, env in (
                    ("this tree", "tree", environment(None)),
                    ("base", "base", environment(str(site))),
                )
            }
            interleaved(args, model, servers, cells, alternate=True)
    write(Path(args.out), args, base, head, before, cells)
    return 0


def write(
    out: Path, args, base: str, head: str, before: dict, cells: dict[tuple, list[dict]]
) -> None:
    rows = [
        {
            "model": model,
            "protocol": protocol,
            "concurrency": concurrency,
            "variant": name,
            "infer_per_s": statistics.median(r["throughput"] for r in runs),
            "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
            "mean_batch": statistics.median(r["mean_batch"] for r in runs),
            "cpu_us": statistics.median(r["cpu_us"] for r in runs),
            "rounds": [round(r["throughput"]) for r in runs],
        }
        for (model, protocol, concurrency, name), runs in sorted(cells.items())
    ]
    after = run.machine()
    (out / "revision_ab.json").write_text(
        json.dumps(
            {
                "base": base,
                "tree": head,
                "machine": {"before": before, "after": after},
                "cells": rows,
            },
            indent=1,
        )
    )
    lines = [
        f"# This tree ({head}) against {base}, interleaved on one core",
        "",
        f"`.venv/bin/python bench/revision_ab.py --base {args.base} --rounds {args.rounds} --models "
        f"{' '.join(args.models)} --protocols {' '.join(args.protocols)} --concurrency "
        f"{' '.join(map(str, args.concurrency))}`, {before['cpu']}, {before['cpus']} CPUs "
        f"({before['hypervisor']} guest), kernel {before['kernel']}, Python {before['python']}; load "
        f"average before {' / '.join(before['loadavg'])}, after {' / '.join(after['loadavg'])}.",
        "",
        "Both predictors run with no flags, pinned to CPU 0, perf_analyzer to CPU 1 (batch-1 "
        "requests, binary tensors over HTTP); every round measures each cell on both, back to back. "
        "Medians over the rounds; the last column is each round's infer/s. Server CPU per request "
        "is the server process's CPU time over the perf_analyzer run divided by the requests it "
        "answered.",
        "",
        "| model | protocol | c | code | infer/s | p50 ms | mean batch | server CPU µs/request | rounds (infer/s) |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['protocol']} | {r['concurrency']} | {r['variant']} | "
            f"{r['infer_per_s']:.0f} | {r['p50_ms']:.2f} | {r['mean_batch']:.1f} | {r['cpu_us']:.0f} | "
            f"{', '.join(map(str, r['rounds']))} |"
        )
    lines += [
        "",
        "Paired by round (the two measured back to back, so they share the VM's speed of that "
        "minute): this tree's infer/s and server CPU per request as a share of the base's, each "
        "round, and the median of those ratios.",
        "",
        "| model | protocol | c | infer/s ratio (median) | per round | CPU/request ratio (median) | per round |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for model, protocol, concurrency, speed, cpu in paired(cells):
        lines.append(
            f"| {model} | {protocol} | {concurrency} | {statistics.median(speed):.2f} | "
            f"{', '.join(f'{r:.2f}' for r in speed)} | {statistics.median(cpu):.2f} | "
            f"{', '.join(f'{r:.2f}' for r in cpu)} |"
        )
    (out / "revision_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def paired(cells: dict[tuple, list[dict]]) -> list[tuple]:
    """(model, protocol, c, infer/s ratios, CPU ratios) per cell measured on both sides; rounds
    where one side found no stable window are left out of the pairs."""
    found = []
    for model, protocol, concurrency, name in sorted(cells):
        if name != "base" or (model, protocol, concurrency, "this tree") not in cells:
            continue
        base = {r["round"]: r for r in cells[(model, protocol, concurrency, "base")]}
        tree = {r["round"]: r for r in cells[(model, protocol, concurrency, "this tree")]}
        rounds = sorted(set(base) & set(tree))
        if rounds:
            speed = [tree[i]["throughput"] / base[i]["throughput"] for i in rounds]
            cpu = [tree[i]["cpu_us"] / base[i]["cpu_us"] for i in rounds]
            found.append((model, protocol, concurrency, speed, cpu))
    return found


if __name__ == "__main__":
    raise SystemExit(main())
