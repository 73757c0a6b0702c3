"""`kbundle canary set|promote|rollback FILE ...`: move a canary by editing the manifest.

    kbundle canary set FILE --percent N [--storage-uri URI] [--image IMAGE] [--name ISVC] [--dry-run]
    kbundle canary promote FILE [--name ISVC] [--dry-run]
    kbundle canary rollback FILE [--name ISVC] [--dry-run]
    kbundle canary analyze [NAME] [--prometheus URL]   (canary_analyze.py)
    kbundle canary rollout FILE --storage-uri URI ...  (canary_rollout.py)

The file is rewritten atomically and only the intended lines change; `--dry-run` prints the
unified diff instead. Exit 0 on success (or nothing to do), 1 when the edit is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _percent(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--percent must be an integer from 0 to 100, got {text!r}"
        ) from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"--percent must be from 0 to 100, got {value}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="manifest holding the InferenceService")
    parser.add_argument(
        "--name", default=None, help="InferenceService to edit in a multi-document file"
    )
    parser.add_argument(
        "--canary-name",
        default=None,
        help="Standard mode: which spec.canary[] entry (predictor.name); default the only one",
    )
    parser.add_argument(
        "--default-mode",
        default="Knative",
        choices=["Knative", "Serverless", "Standard", "RawDeployment"],
        help="mode of an InferenceService without the deploymentMode annotation",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the diff, do not write")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    set_p = sub.add_parser(
        "set", help="send N%% of traffic to the candidate (new storage URI / image)"
    )
    _common(set_p)
    set_p.add_argument("--percent", type=_percent, required=True, help="0-100")
    set_p.add_argument(
        "--storage-uri", default=None, help="candidate model URI (e.g. s3://bucket/model/v2)"
    )
    set_p.add_argument("--image", default=None, help="candidate predictor image")
    _common(
        sub.add_parser(
            "promote", help="the candidate takes 100%% (Knative: remove canaryTrafficPercent)"
        )
    )
    _common(
        sub.add_parser(
            "rollback", help="the candidate gets 0%% (previous version takes all traffic)"
        )
    )
    from kbundle.commands import canary_analyze, canary_rollout

    canary_rollout.add_arguments(
        sub.add_parser(
            "rollout",
            help="progressive rollout: set N%%, apply, bake, analyze, advance / hold / roll back",
        )
    )
    canary_analyze.add_arguments(
        sub.add_parser(
            "analyze",
            help="promote / hold / roll back, from a running `kbundle up` canary's figures",
        )
    )


def run(args: argparse.Namespace) -> int:
    if args.action == "analyze":
        from kbundle.commands import canary_analyze

        return canary_analyze.run(args)
    if args.action == "rollout":
        from kbundle.commands import canary_rollout

        return canary_rollout.run(args)
    try:
        from kbundle.manifests import canary
    except ImportError as exc:
        print(f"error: {exc}; install with: pip install 'kbundle[manifests]'", file=sys.stderr)
        return 2
    from kbundle.atomic import FileChanged, atomic_write, read_with_digest

    try:
        raw, read_digest = read_with_digest(args.file)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.file}: {exc}", file=sys.stderr)
        return 1
    common = {"name": args.name, "canary_name": args.canary_name, "default_mode": args.default_mode}
    try:
        if args.action == "set":
            plan = canary.set_canary(
                args.file, text, args.percent, args.storage_uri, args.image, **common
            )
        elif args.action == "promote":
            plan = canary.promote(args.file, text, **common)
        else:
            plan = canary.rollback(args.file, text, **common)
    except canary.CanaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.dry_run:
        sys.stdout.write(plan.diff())
        return 0
    if not plan.changed:
        print(f"{args.file}: {plan.target} unchanged")
        return 0
    try:
        atomic_write(args.file, plan.new, expect_digest=read_digest)
    except FileChanged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: could not write {args.file} (left unchanged): {exc}", file=sys.stderr)
        return 1
    print(f"{args.file}: {plan.target} ({plan.mode} mode): canary {args.action} done")
    return 0
