"""`kbundle validate PATH... [--crd FILE/DIR] [--no-cluster] [--default-mode M] [--no-lint] [--json]`.

Exit status: 0 when no errors (warnings allowed), 1 on any error, 2 when it could not run.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="YAML files or folders (multi-document ok)"
    )
    parser.add_argument(
        "--crd",
        default=None,
        metavar="FILE/DIR",
        help="CRD file or folder (default: the cluster's CRDs via kubectl when reachable, "
        "else the KServe and Prometheus Operator CRDs packaged with kbundle)",
    )
    parser.add_argument("--no-cluster", action="store_true", help="never ask kubectl for the CRDs")
    parser.add_argument(
        "--default-mode",
        default="Knative",
        choices=["Knative", "Serverless", "Standard", "RawDeployment"],
        help="deployment mode of objects without the deploymentMode "
        "annotation (the cluster's inferenceservice-config default; KServe ships Serverless)",
    )
    parser.add_argument(
        "--no-lint", action="store_true", help="only the cluster's own checks, no kbundle lint"
    )
    parser.add_argument("--json", action="store_true", help="print findings as JSON")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print findings only, no summary"
    )


def run(args: argparse.Namespace) -> int:
    try:
        from kbundle.manifests.check import validate_paths
        from kbundle.manifests.crds import CrdSourceError, resolve_crds
    except ImportError as exc:  # the manifests extra is not installed
        print(f"error: {exc}; install with: pip install 'kbundle[manifests]'", file=sys.stderr)
        return 2
    try:
        crds = resolve_crds(args.crd, use_cluster=not args.no_cluster)
    except CrdSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = validate_paths(args.paths, crds, default_mode=args.default_mode, lint=not args.no_lint)
    if args.json:
        print(
            json.dumps(
                {
                    "findings": [f.as_dict() for f in report.findings],
                    "checked": report.checked,
                    "skipped": report.skipped,
                    "crds": crds.sources,
                },
                indent=2,
            )
        )
    else:
        for finding in report.findings:
            print(finding.format())
        if not args.quiet:
            for line in report.skipped:
                print(f"note: not checked: {line}")
            print(
                f"{len(report.checked)} object(s) checked against {', '.join(crds.sources)}: "
                f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)"
            )
    return 1 if report.errors else 0
