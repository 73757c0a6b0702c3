"""The benchmark's results: what one cell measured, and the tables and plot written from it.

`bench/run.py` measures; this module writes bench/results/ (results.md, results.csv,
raw_engine.csv, results.png) and summarizes py-spy profiles, so a replot or a format change never
touches the measuring code.
"""

from __future__ import annotations

import csv
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVERS = {
    # name -> (command builder, description)
    "stock-kserve": "plain kserve.Model + ORT per request (KServe custom-model sample)",
    "kbundle-nobatch": "kbundle predictor, --max_batch_size 0",
    "kbundle": "kbundle predictor, dynamic batching on (default settings)",
}


@dataclass
class Cell:
    server: str
    model: str
    protocol: str
    concurrency: int
    throughput: list[float] = field(default_factory=list)
    p50_us: list[float] = field(default_factory=list)
    p99_us: list[float] = field(default_factory=list)
    mean_batch: list[float] = field(default_factory=list)


def load_note(info: dict) -> str:
    """Say when other jobs shared the cores: the pinned server then did not have its core alone."""
    # The run itself keeps about one runnable task per CPU (server + perf_analyzer).
    busy = float(info["loadavg"][0]) > int(info["cpus"]) + 1
    return (
        ": other jobs shared both cores, so the pinned server did not have its core to itself"
        if busy
        else ""
    )


def portable_arg(arg: str) -> str:
    """A command-line argument as the results file shows it: no absolute path of this machine
    (inside the repository relative to it, elsewhere only the file name)."""
    if not arg.startswith("/"):
        return arg
    path = Path(arg)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else f".../{path.name}"


def summarize_profile(raw_path: Path, top: int = 25) -> str:
    """Own-time and cumulative-time tables from a py-spy raw (collapsed) profile."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in raw_path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + n
    lines = [f"{samples} samples", "", "own time (where the CPU is):"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / max(samples, 1):5.1f}%  {frame[:140]}")
    lines += ["", "cumulative time:"]
    for frame, n in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / max(samples, 1):5.1f}%  {frame[:140]}")
    return "\n".join(lines) + "\n"


# -- reporting -------------------------------------------------------------------------------
def spread(values: list[float]) -> str:
    return f"{min(values):.0f}–{max(values):.0f}" if values else ""


def write_results(
    args, cells: list[Cell], raw: dict, info: dict, steal_pct: float, elapsed: float
) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    limit = {m: max(statistics.median(v) for v in raw[m].values()) for m in raw}
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "model",
                "protocol",
                "server",
                "concurrency",
                "throughput_median",
                "throughput_min",
                "throughput_max",
                "p50_us_median",
                "p99_us_median",
                "p99_us_max",
                "mean_batch",
                "ratio_to_raw_limit",
                "repeats",
            ]
        )
        for c in cells:
            tput = statistics.median(c.throughput)
            w.writerow(
                [
                    c.model,
                    c.protocol,
                    c.server,
                    c.concurrency,
                    round(tput, 1),
                    round(min(c.throughput), 1),
                    round(max(c.throughput), 1),
                    round(statistics.median(c.p50_us)),
                    round(statistics.median(c.p99_us)),
                    round(max(c.p99_us)),
                    round(statistics.mean(c.mean_batch), 2) if c.mean_batch else "",
                    round(tput / limit[c.model], 5),
                    len(c.throughput),
                ]
            )
    with open(out / "raw_engine.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "batch", "rows_per_s_median", "rows_per_s_min", "rows_per_s_max"])
        for m, by_batch in raw.items():
            for b, runs in by_batch.items():
                w.writerow(
                    [m, b, round(statistics.median(runs)), round(min(runs)), round(max(runs))]
                )
    lines = [
        "# kbundle benchmark results",
        "",
        f"Machine: {info['cpu']}, {info['cpus']} vCPUs ({info['hypervisor']} guest), kernel {info['kernel']}, "
        f"Python {info['python']}. CPU steal during the run: {steal_pct:.1f}% of all CPU time; load average "
        f"at the end {' / '.join(info['loadavg'])} (1/5/15 min) on {info['cpus']} CPUs{load_note(info)}. "
        f"Server pinned to CPU {args.server_cpu}, perf_analyzer to CPU {args.client_cpu}. kbundle started "
        "with no tuning flags (its CPU-budget defaults: one intra-op thread on the pinned core); stock "
        f"KServe with `--intra_op_threads 1`. Run took {elapsed / 60:.1f} min; "
        f"each cell repeated {args.repeats}× (perf_analyzer -p {args.window_ms}, batch-1 requests, binary "
        "tensors over HTTP, raw contents over gRPC). Read the spread (min–max) next to each median.",
        "",
        "Command: `bash bench/run.sh` " + " ".join(map(portable_arg, sys.argv[1:])),
        "",
        "## (a) Raw engine limit: onnxruntime `session.run` in a loop, same core",
        "",
        "| model | batch | rows/s (median) | spread |",
        "|---|---:|---:|---|",
    ]
    for m, by_batch in raw.items():
        for b, runs in by_batch.items():
            lines.append(f"| {m} | {b} | {statistics.median(runs):.0f} | {spread(runs)} |")
    lines += [
        "",
        "## (b) stock KServe vs (c) kbundle, under perf_analyzer",
        "",
        "Ratio = median throughput / raw engine limit (best rows/s over the batch sizes above). "
        "Mean batch = rows per engine call the batcher formed (from kbundle_batch_size).",
        "",
        "| model | protocol | server | conc. | infer/s (median) | spread | p50 ms | p99 ms | mean batch | of raw limit |",
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for c in cells:
        tput = statistics.median(c.throughput)
        batch = f"{statistics.mean(c.mean_batch):.1f}" if c.mean_batch else "–"
        lines.append(
            f"| {c.model} | {c.protocol} | {c.server} | {c.concurrency} | {tput:.0f} | {spread(c.throughput)} | "
            f"{statistics.median(c.p50_us) / 1000:.2f} | {statistics.median(c.p99_us) / 1000:.2f} | {batch} | "
            f"{100 * tput / limit[c.model]:.2g}% |"
        )
    lines += ["", "Servers: " + "; ".join(f"**{k}**: {v}" for k, v in SERVERS.items()), ""]
    (out / "results.md").write_text("\n".join(lines))
    plot(out / "results.csv", out / "raw_engine.csv", out / "results.png", info)


def plot(csv_path: Path, raw_csv: Path, path: Path, info: dict) -> None:
    """Throughput vs concurrency per (model, protocol), min–max error bars, from results.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    limit: dict[str, float] = {}
    for r in csv.DictReader(open(raw_csv)):
        limit[r["model"]] = max(limit.get(r["model"], 0.0), float(r["rows_per_s_median"]))
    panels = sorted({(r["model"], r["protocol"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    for ax, (model, protocol) in zip(axes[0], panels, strict=True):
        top = 0.0
        for server in SERVERS:
            cells = sorted(
                (
                    r
                    for r in rows
                    if (r["model"], r["protocol"], r["server"]) == (model, protocol, server)
                ),
                key=lambda r: int(r["concurrency"]),
            )
            if not cells:
                continue
            xs = [int(r["concurrency"]) for r in cells]
            med = [float(r["throughput_median"]) for r in cells]
            lo = [m - float(r["throughput_min"]) for m, r in zip(med, cells, strict=True)]
            hi = [float(r["throughput_max"]) - m for m, r in zip(med, cells, strict=True)]
            top = max(top, *(float(r["throughput_max"]) for r in cells))
            ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=server)
        raw = limit.get(model, 0.0)
        if raw and raw < 3 * top:
            ax.axhline(raw, color="grey", linestyle="--", label="raw engine limit")
        elif raw:  # far off the chart (tiny model): say it rather than squash the lines
            ax.text(
                0.02,
                0.96,
                f"raw engine limit {raw:,.0f} rows/s (off scale)",
                transform=ax.transAxes,
                fontsize=7,
                va="top",
            )
        ax.set_xscale("log", base=2)
        ax.set_title(f"{model} / {protocol}")
        ax.set_xlabel("concurrency")
        ax.set_ylabel("infer/s (batch-1 requests)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(
        f"{info['cpu']} ({info['cpus']} vCPUs, shared): server on 1 core, perf_analyzer on the other",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
