"""`kbundle samples build [--out DIR] [--force]`."""

from __future__ import annotations

import argparse
import json

from kbundle import samples


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["build"], help="what to do")
    parser.add_argument(
        "--out", default=None, help=f"models dir (default {samples.default_models_dir()})"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even when cached")


def run(args: argparse.Namespace) -> int:
    models_dir = samples.build_all(args.out, force=args.force)
    for info_file in sorted(models_dir.glob("*/*/model-info.json")):
        info = json.loads(info_file.read_text())
        print(f"{info_file.parent}: held-out accuracy {info['held_out_accuracy']:.3f}")
    return 0
