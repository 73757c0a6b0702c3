"""`kbundle canary analyze [NAME] [--prometheus URL]`: promote, hold or roll back.

Without --prometheus the figures come from a running `kbundle up`; with it, from PromQL over the
cluster's (or a local) Prometheus. Exit status: 0 promote, 3 hold, 4 roll back, 1 on error (one
line on stderr, never a traceback). Never edits a file.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field

from kbundle.commands.up import state_root
from kbundle.errors import ConfigError

EXIT = {"promote": 0, "hold": 3, "roll back": 4}


def duration_s(text: str) -> int:
    """'300', '90s', '5m', '1h' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 30s, 5m or 300, got {text!r}")
    return int(float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kbundle.local.analysis import Thresholds

    d = Thresholds()
    parser.add_argument(
        "name", nargs="?", help="InferenceService name (default: the only one running)"
    )
    parser.add_argument("--state-dir", default=None, help="as given to kbundle up")
    parser.add_argument("--prometheus", default=None, help="Prometheus base URL to query")
    parser.add_argument("--namespace", default=None, help="with --prometheus: the namespace")
    parser.add_argument(
        "--component", default="predictor", help="with --prometheus: predictor or transformer"
    )
    parser.add_argument("--explain", action="store_true", help="print every query and answer")
    parser.add_argument(
        "--window", type=duration_s, default=300, help="traffic to compare (default 5m)"
    )
    parser.add_argument(
        "--warmup", type=duration_s, default=10, help="a new revision's first seconds left out"
    )
    add_threshold_arguments(parser, d)


def add_threshold_arguments(parser: argparse.ArgumentParser, d) -> None:
    for flag, typ, help_ in (
        ("min-requests", int, "requests each revision needs before any verdict but hold"),
        ("max-error-rate-increase", float, "allowed error-rate increase, absolute"),
        ("max-p99-ratio", float, "allowed canary/previous p99 ratio"),
        ("max-p50-ratio", float, "allowed canary/previous p50 ratio"),
        ("latency-floor-ms", float, "a canary quantile under this never counts as slow"),
        ("confidence", float, "statistical confidence needed to roll back"),
    ):
        default = getattr(d, flag.replace("-", "_"))
        parser.add_argument(f"--{flag}", type=typ, default=default, help=f"{help_} ({default})")


@dataclass
class Analysis:
    isvc: str
    canary: str | None
    previous: str | None
    figures: dict[str, dict] = field(default_factory=dict)  # revision -> window evidence
    action: str = "hold"
    reasons: list[str] = field(default_factory=list)
    source: str = "kbundle up"
    manifest: str | None = None


def thresholds(args: argparse.Namespace):
    from kbundle.local.analysis import Thresholds

    return Thresholds(
        args.min_requests,
        args.max_error_rate_increase,
        args.max_p99_ratio,
        args.max_p50_ratio,
        args.latency_floor_ms,
        args.confidence,
    )


def analyze(args: argparse.Namespace) -> Analysis:
    """One analysis; ConfigError / PromError with a one-line message on failure."""
    return _from_prometheus(args) if args.prometheus else _from_up(args)


def _from_up(args: argparse.Namespace) -> Analysis:
    from kbundle.local.analysis import decide
    from kbundle.local.client import fetch_status, find_running

    up = find_running(state_root(args.state_dir), args.name)
    status = fetch_status(up, args.window)
    revs = {r["tag"]: r for r in status["revisions"]}
    out = Analysis(status["isvc"], None, None, manifest=status["manifest"])
    if "latest" not in revs or "prev" not in revs:
        out.reasons = ["no canary in progress (the latest revision takes all traffic)"]
        return out
    latest, prev = revs["latest"], revs["prev"]
    out.canary, out.previous = latest["name"], prev["name"]
    for rev in (latest, prev):
        window = rev["window"]
        window["buckets"] = [(float(b), c) for b, c in window["buckets"]]
        out.figures[rev["name"]] = window
    verdict = decide(latest["window"], prev["window"], thresholds(args))
    out.action, out.reasons = verdict.action, verdict.reasons
    return out


def _from_prometheus(args: argparse.Namespace) -> Analysis:
    from kbundle.local.analysis import decide
    from kbundle.local.prometheus import PromError, Prometheus, gather

    if not args.name:
        raise PromError("with --prometheus, name the InferenceService")
    explain = (lambda line: print(line)) if args.explain else None
    prom = Prometheus(args.prometheus, explain=explain)
    labels = {"isvc": args.name, "namespace": args.namespace or ""}
    src, figures = gather(prom, labels, args.component, args.window, args.warmup)
    names = sorted(figures)  # Knative revision names end in a zero-padded number
    out = Analysis(args.name, names[-1], None, figures, source=f"Prometheus ({src.name} metrics)")
    if len(names) < 2:
        out.reasons = [f"only {names[-1]} served in the window: no previous revision to compare"]
        return out
    # The previous one is the revision that took the rest of the traffic (the last rolled out).
    out.previous = max(names[:-1], key=lambda n: figures[n]["requests"])
    verdict = decide(figures[out.canary], figures[out.previous], thresholds(args))
    out.action, out.reasons = verdict.action, verdict.reasons
    return out


def run(args: argparse.Namespace) -> int:
    from kbundle.local.prometheus import PromError

    try:
        result = analyze(args)
    except (ConfigError, PromError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if result.canary is None and not args.prometheus:
        print(f"{result.isvc}: {result.reasons[0]}; nothing to analyze")
        return 0  # not a failure
    report(result, args.window)
    return EXIT[result.action]


def report(result: Analysis, window_s: int) -> None:
    print(
        f"{result.isvc}: canary {result.canary or '-'} vs {result.previous or '-'}, "
        f"last {window_s}s, from {result.source}"
    )
    for name, w in result.figures.items():
        print(
            f"  {name:<28} requests {w['requests']:>6}  errors {w['errors']:>4} "
            f"({w['error_rate']:.2%})  p50 {_ms(w['p50_ms'])} ms  p99 {_ms(w['p99_ms'])} ms"
        )
    print(f"verdict: {result.action.upper()}")
    for reason in result.reasons:
        print(f"  - {reason}")
    hint = {"promote": "kbundle canary promote", "roll back": "kbundle canary rollback"}
    if result.action in hint and result.manifest:
        print(f"  next: {hint[result.action]} {result.manifest}")


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"
