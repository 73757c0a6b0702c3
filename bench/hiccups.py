"""How long this machine stops a running thread by itself: a hiccup meter, one command.

`python bench/hiccups.py [--seconds 30] [--cpu 0]` pins itself to one CPU and spins, reading the
clock; any gap between two readings longer than `--min-ms` is time the thread did not run
(hypervisor steal, interrupts, the kernel's own work, other tasks on that CPU). Nothing else of
ours runs meanwhile, so a stop seen here also stops any server on that CPU: a latency target
tighter than the longest common stop cannot hold at the percentile where the stops fall. Writes
bench/results/hiccups.md and .json: stops per second over 1, 5, 10 and 50 ms, the longest, the
share of the run lost, and the CPU steal /proc/stat counted over the same span.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import cpu_times, machine  # noqa: E402

BOUNDS_MS = (1, 5, 10, 50)


def spin(seconds: float, min_gap_s: float) -> list[float]:
    """Gaps longer than `min_gap_s` between consecutive clock readings, for `seconds`."""
    gaps: list[float] = []
    clock = time.perf_counter
    last = start = clock()
    end = start + seconds
    while last < end:
        now = clock()
        if now - last > min_gap_s:
            gaps.append(now - last)
        last = now
    return gaps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--min-ms", type=float, default=0.5)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    before, cpu_before = machine(), cpu_times()
    gaps = spin(args.seconds, args.min_ms / 1000)
    cpu_after = cpu_times()
    spent = {k: cpu_after[k] - cpu_before[k] for k in cpu_before}
    steal = 100 * spent["steal"] / max(1, sum(spent.values()))
    counts = {ms: sum(g > ms / 1000 for g in gaps) for ms in BOUNDS_MS}
    result = {
        "machine": before,
        "seconds": args.seconds,
        "cpu": args.cpu,
        "stops_over_ms": counts,
        "longest_ms": round(max(gaps, default=0) * 1000, 2),
        "lost_pct": round(100 * sum(gaps) / args.seconds, 2),
        "steal_pct_all_cpus": round(steal, 2),
    }
    out = Path(args.out)
    (out / "hiccups.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Hiccups: how long this machine stops a spinning thread by itself",
        "",
        f"`python bench/hiccups.py --seconds {args.seconds:g} --cpu {args.cpu}`, {before['cpu']}, "
        f"{before['cpus']} CPUs ({before['hypervisor']} guest), kernel {before['kernel']}; load "
        f"average before {' / '.join(before['loadavg'])}.",
        "",
        f"One thread pinned to CPU {args.cpu} spun for {args.seconds:g} s reading the clock, with "
        "nothing of ours running; a gap between two readings is time it was not running.",
        "",
        "| stops longer than | count | per second |",
        "|---|---:|---:|",
        *(f"| {ms} ms | {n} | {n / args.seconds:.2f} |" for ms, n in counts.items()),
        "",
        f"Longest stop {result['longest_ms']} ms; {result['lost_pct']} % of the run lost to stops "
        f"over {args.min_ms:g} ms; CPU steal over the run (all CPUs, /proc/stat) "
        f"{result['steal_pct_all_cpus']} %.",
        "",
    ]
    (out / "hiccups.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
