"""`kbundle canary analyze [NAME]`: promote, hold or roll back, from the running canary's figures.

Exit status: 0 promote, 3 hold, 4 roll back, 1 on error (so a script can act on it).
"""

from __future__ import annotations

import argparse
import sys

from kbundle.commands.up import state_root
from kbundle.errors import ConfigError

EXIT = {"promote": 0, "hold": 3, "roll back": 4}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kbundle.local.analysis import Thresholds

    d = Thresholds()
    parser.add_argument(
        "name", nargs="?", help="InferenceService name (default: the only one running)"
    )
    parser.add_argument("--state-dir", default=None, help="as given to kbundle up")
    parser.add_argument(
        "--window", type=float, default=300.0, help="seconds of traffic to compare (default 300)"
    )
    parser.add_argument(
        "--min-requests",
        type=int,
        default=d.min_requests,
        help=f"canary requests needed before promoting (default {d.min_requests})",
    )
    parser.add_argument(
        "--max-error-rate-increase",
        type=float,
        default=d.max_error_rate_increase,
        help=f"allowed error-rate increase, absolute (default {d.max_error_rate_increase})",
    )
    parser.add_argument(
        "--max-p99-ratio",
        type=float,
        default=d.max_p99_ratio,
        help=f"allowed canary/previous p99 ratio (default {d.max_p99_ratio})",
    )
    parser.add_argument(
        "--max-p50-ratio",
        type=float,
        default=d.max_p50_ratio,
        help=f"allowed canary/previous p50 ratio (default {d.max_p50_ratio})",
    )


def run(args: argparse.Namespace) -> int:
    from kbundle.local.analysis import Thresholds, decide
    from kbundle.local.client import fetch_status, find_running

    try:
        up = find_running(state_root(args.state_dir), args.name)
        status = fetch_status(up, args.window)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    revs = {r["tag"]: r for r in status["revisions"]}
    if "latest" not in revs or "prev" not in revs:
        print(
            f"{status['isvc']}: no canary in progress (the latest revision takes all traffic); nothing to analyze"
        )
        return 0
    latest, prev = revs["latest"], revs["prev"]
    limits = Thresholds(
        args.min_requests, args.max_error_rate_increase, args.max_p99_ratio, args.max_p50_ratio
    )
    verdict = decide(latest["window"], prev["window"], limits)
    print(
        f"{status['isvc']}: canary {latest['name']} ({latest['traffic']}%) vs {prev['name']} "
        f"({prev['traffic']}%), last {args.window:.0f}s"
    )
    for rev in (latest, prev):
        w = rev["window"]
        print(
            f"  {rev['name']:<22} requests {w['requests']:>6}  errors {w['errors']:>4} ({w['error_rate']:.2%})  "
            f"p50 {_ms(w['p50_ms'])} ms  p99 {_ms(w['p99_ms'])} ms"
        )
    print(f"verdict: {verdict.action.upper()}")
    for reason in verdict.reasons:
        print(f"  - {reason}")
    hint = {"promote": "kbundle canary promote", "roll back": "kbundle canary rollback"}.get(
        verdict.action
    )
    if hint:
        print(f"  next: {hint} {status['manifest']}")
    return EXIT[verdict.action]


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"
