"""The `kbundle` command: one sub-command module per job, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Each module has `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "samples": ("kbundle.commands.samples", "build the sample model repository (cached)"),
    "serve": ("kbundle.commands.serve", "serve a model dir with the engine predictor"),
    "up": ("kbundle.commands.up", "run an InferenceService file locally, no cluster"),
    "status": ("kbundle.commands.status", "revisions, traffic and latency of a running kbundle up"),
    "canary-analyze": ("kbundle.commands.canary_analyze", "promote/hold/roll back a local canary"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kbundle", description="KServe platform bundle")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
