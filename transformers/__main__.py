"""`python -m kbundle.transformers --model_name NAME --predictor_host HOST:PORT
[--predictor_protocol grpc-v2|v2] [--model_dir DIR] [kserve flags]`.

`--protocol` (the deprecated flag KServe's own samples still use, which kserve 0.21 parses and
then ignores) is accepted here as an alias of `--predictor_protocol`; giving both with different
values, or `v1` through either, is refused at start-up rather than silently ignored.
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys

from kserve import model_server

from kbundle import cpu_budget
from kbundle.serving.lifecycle import add_drain_flag
from kbundle.serving.server import KbundleModelServer, check_workers, loop_executor_workers
from kbundle.transformers.hop import HopConfig
from kbundle.transformers.model import TransformerModel

logger = logging.getLogger("kbundle.transformer")
DEFAULT_MODEL_DIR = "/mnt/models"
DEFAULT_PROTOCOL = "grpc-v2"
PROTOCOLS = ("grpc-v2", "v2")


def build_parser() -> argparse.ArgumentParser:
    # A copy: "resolve" strips the overridden flags from the parent's own actions, which would
    # break kserve's parser (and a second build_parser) in this process.
    parser = argparse.ArgumentParser(
        prog="python -m kbundle.transformers",
        parents=[copy.deepcopy(model_server.parser)],
        conflict_handler="resolve",
    )
    parser.add_argument(
        "--model_dir",
        default=DEFAULT_MODEL_DIR,
        help="Transformer model dir holding transformer.yaml (KServe mounts the transformer's storageUri at /mnt/models).",
    )
    parser.add_argument(
        "--predictor_protocol",
        default=None,
        choices=["v1", *PROTOCOLS],
        help=f"How to call the predictor: grpc-v2 (raw tensors, default) or v2 (REST, binary tensors). Default {DEFAULT_PROTOCOL}.",
    )
    parser.add_argument(
        "--protocol",
        default=None,
        choices=["v1", *PROTOCOLS],
        help="Alias of --predictor_protocol (kserve's deprecated name, honoured here rather than ignored).",
    )
    parser.add_argument(
        "--predictor_model_name",
        default=None,
        help="The model's name at the predictor (default: transformer.yaml predictor.model_name, else --model_name).",
    )
    parser.add_argument(
        "--predictor_request_timeout_seconds",
        default=60,
        type=int,
        help="Timeout of one call to the predictor, in seconds (504 when exceeded).",
    )
    parser.add_argument(
        "--predictor_request_retries",
        default=2,
        type=int,
        help="Extra tries when the predictor is unreachable or answers UNAVAILABLE/503.",
    )
    add_drain_flag(parser)
    return parser


def resolve_protocol(args: argparse.Namespace) -> str:
    """--predictor_protocol, else its alias --protocol, else grpc-v2; SystemExit on a conflict or v1."""
    given = {
        flag: value
        for flag, value in (
            ("--predictor_protocol", args.predictor_protocol),
            ("--protocol", args.protocol),
        )
        if value
    }
    if len(set(given.values())) > 1:
        raise SystemExit(
            f"error: --predictor_protocol {args.predictor_protocol} and --protocol {args.protocol} disagree; give one"
        )
    protocol = next(iter(given.values()), DEFAULT_PROTOCOL)
    if protocol not in PROTOCOLS:
        raise SystemExit(
            f"error: predictor protocol {protocol!r} is not supported: the kbundle transformer speaks "
            f"V2 to the predictor ({' or '.join(PROTOCOLS)})"
        )
    return protocol


def hop_config(args: argparse.Namespace) -> HopConfig:
    if not args.predictor_host:
        raise SystemExit("error: --predictor_host HOST:PORT is required (the predictor to call)")
    if args.predictor_request_retries < 0 or args.predictor_request_timeout_seconds <= 0:
        raise SystemExit("error: --predictor_request_retries must be >= 0 and the timeout > 0")
    return HopConfig(
        host=args.predictor_host,
        protocol=resolve_protocol(args),
        model_name=args.predictor_model_name or "",  # empty: the spec's, else --model_name
        timeout_s=float(args.predictor_request_timeout_seconds),
        retries=args.predictor_request_retries,
        use_ssl=bool(args.predictor_use_ssl),
        max_message_bytes=max(
            args.grpc_max_send_message_length, args.grpc_max_receive_message_length
        ),
    )


def announce_budget(args: argparse.Namespace) -> None:
    """Decode/resize run on the loop's executor, sized from the CPU budget (kbundle.cpu_budget)."""
    budget = cpu_budget.cpu_budget()
    child_env = cpu_budget.apply_child_thread_env(budget)
    derived = {"loop_executor_threads": loop_executor_workers(args.max_asyncio_workers)}
    cpu_budget.announce(budget, {**derived, **{k.lower(): v for k, v in child_env.items()}})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    check_workers(args, "transformer", refuse=False)
    announce_budget(args)
    model = TransformerModel(args.model_name, args.model_dir, hop_config(args))
    if not model.load():
        print(
            f"error: transformer '{args.model_name}' failed to load: {model.load_error}",
            file=sys.stderr,
        )
        return 1
    # The lean gRPC server (kbundle.serving.grpc_lean), as the predictor: calls run on the loop.
    KbundleModelServer(args).start([model])
    return 0


if __name__ == "__main__":
    sys.exit(main())
