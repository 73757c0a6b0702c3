"""`kbundle serve MODEL_DIR [--model_name NAME] [predictor flags]`: the predictor, in the foreground."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_dir", help="model directory holding model.onnx / model.plan / model.pt2"
    )
    parser.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        help="any predictor flag (see python -m kbundle.predictors -h)",
    )


def run(args: argparse.Namespace) -> int:
    # Imported here: kserve takes seconds to import, and `kbundle --help`/other commands build this parser.
    from kbundle.predictors.__main__ import main as predictor_main

    return predictor_main(["--model_dir", args.model_dir, *args.rest])
