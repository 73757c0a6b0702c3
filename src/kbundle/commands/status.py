"""`kbundle status [NAME]`: revisions, traffic, readiness, requests and latency of a running `kbundle up`."""

from __future__ import annotations

import argparse
import json
import sys

from kbundle.commands.up import state_root
from kbundle.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name", nargs="?", help="InferenceService name (default: the only one running)"
    )
    parser.add_argument("--state-dir", default=None, help="as given to kbundle up")
    parser.add_argument(
        "--window", type=float, default=None, help="also show figures for the last S seconds"
    )
    parser.add_argument("--json", action="store_true", help="print the raw status JSON")


def run(args: argparse.Namespace) -> int:
    from kbundle.local.client import fetch_status, find_running

    try:
        up = find_running(state_root(args.state_dir), args.name)
        status = fetch_status(up, args.window)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=1))
        return 0
    print(render(status, up))
    return 0


def render(status: dict, up: dict) -> str:
    lines = [
        f"{status['isvc']} ({status['mode']})  file {status['manifest']}",
        f"  REST http://{up['host']}:{up['port']}  gRPC {up['host']}:{up['grpc_port']}  pid {up['pid']}",
    ]
    if status.get("latest"):
        canary = status.get("canary_percent")
        lines.append(
            f"  latest {status['latest']}  rolled out {status.get('latest_rolled_out')}  "
            f"previous {status.get('previous_rolled_out')}  canaryTrafficPercent "
            f"{'-' if canary is None else canary}"
        )
    if status.get("last_error"):
        lines.append(f"  last apply failed: {status['last_error']}")
    head = f"  {'REVISION':<22} {'TAG':<7} {'TRAFFIC':>7} {'STATE':<15} {'REQS':>6} {'ERRS':>5} {'P50ms':>7} {'P99ms':>7} {'PREDICTS':>8} {'RESTARTS':>8}"
    lines.append(head)
    for rev in status["revisions"]:
        tot = rev["totals"]
        predicts = [
            c["predict_count"] for c in rev["components"] if c["label"].endswith("/predictor")
        ]
        restarts = sum(c["restarts"] for c in rev["components"])
        lines.append(
            f"  {rev['name']:<22} {rev['tag']:<7} {rev['traffic']:>6}% {rev['state']:<15} {tot['requests']:>6} "
            f"{tot['errors']:>5} {_ms(tot['p50_ms']):>7} {_ms(tot['p99_ms']):>7} "
            f"{_count(predicts[0] if predicts else None):>8} {restarts:>8}"
        )
        for comp in rev["components"]:
            exit_note = f" last exit {comp['last_exit']}" if comp["last_exit"] is not None else ""
            lines.append(
                f"      {comp['label']}: pid {comp['pid'] or '-'} ready={comp['ready']}{exit_note} log {comp['log']}"
            )
    return "\n".join(lines)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _count(value) -> str:
    return "-" if value is None else str(value)
