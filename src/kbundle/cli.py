"""The `kbundle` command: one sub-command module per job, imported only when used."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Each module has `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "samples": ("kbundle.commands.samples", "build the sample model repository (cached)"),
    "serve": ("kbundle.commands.serve", "serve a model dir with the engine predictor"),
    "validate": ("kbundle.commands.validate", "check manifests: CRD schema, KServe webhook, lint"),
    "canary": ("kbundle.commands.canary", "set/promote/rollback a canary by editing a manifest"),
    "build": (
        "kbundle.commands.build",
        "build or reuse a TensorRT plan from model.onnx for this GPU",
    ),
    "export": (
        "kbundle.commands.export",
        "export a torch model to model.onnx / model.pt2, checked",
    ),
    "up": ("kbundle.commands.up", "run an InferenceService file locally, no cluster"),
    "status": ("kbundle.commands.status", "revisions, traffic and latency of a running kbundle up"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """All sub-commands, or with `only` just that one's arguments: importing a command module
    can be slow (serve imports kserve), so `kbundle validate` should not pay for `serve`."""
    parser = argparse.ArgumentParser(prog="kbundle", description="KServe platform bundle")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=help_text, description=help_text)
        if only in (None, name):
            importlib.import_module(module_name).add_arguments(sub_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    only = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(only).parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
