"""`kbundle up FILE`: run an InferenceService file locally, no cluster (docs/up.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from kbundle import samples
from kbundle.errors import ConfigError

DEFAULT_SCALE_DOWN_DELAY = "60s"  # Knative's default stable window before scale to zero


def state_root(value: str | None) -> Path:
    return Path(value).expanduser() if value else samples.cache_root() / "up"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="InferenceService YAML (the same file kubectl applies)")
    parser.add_argument(
        "--port", type=int, default=8080, help="V2 REST ingress port (default 8080)"
    )
    parser.add_argument(
        "--grpc-port", type=int, default=8081, help="V2 gRPC ingress port (default 8081)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the ingress listens on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--state-dir",
        default=None,
        help="revisions, logs and fetched models (default ~/.cache/kbundle/up; $KBUNDLE_CACHE/up)",
    )
    parser.add_argument(
        "--storage-map",
        action="append",
        default=[],
        metavar="URI=DIR",
        help="serve a bucket prefix from a local folder, e.g. s3://my-bucket=/data/models "
        "(repeatable; s3://kbundle-models maps to the built sample models by default)",
    )
    parser.add_argument(
        "--scale-down-delay",
        default=DEFAULT_SCALE_DOWN_DELAY,
        help="idle time before a minReplicas: 0 revision is stopped, when the manifest has no "
        "autoscaling.knative.dev/scale-down-delay (default 60s)",
    )
    parser.add_argument(
        "--activation-timeout",
        type=float,
        default=120.0,
        help="longest a request waits for a scaled-to-zero revision to start (s, default 120)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM/Ctrl-C, longest wait for in-flight requests (s, default 30)",
    )
    parser.add_argument(
        "--watch-interval",
        type=float,
        default=1.0,
        help="how often the file is checked for changes (s; 0 = never, default 1)",
    )
    parser.add_argument(
        "--runtimes",
        default=None,
        metavar="DIR",
        help="ServingRuntime/ClusterServingRuntime YAML folder (or file): a short-form "
        "predictor.model runs with the runtime KServe would choose, its args and env "
        "(e.g. inferenceservices/runtimes)",
    )
    parser.add_argument("--quiet", action="store_true", help="component output to log files only")


def run(args: argparse.Namespace) -> int:
    from kbundle.local.manifest import load_inference_service

    manifest = Path(args.file)
    try:  # first, before the servers' imports: a bad or hostile file is one line in well under 2 s
        spec = load_inference_service(manifest)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from kbundle.local.app import PortInUse, UpOptions, read_up_file, serve
    from kbundle.local.autoscale import parse_duration
    from kbundle.local.runtime import RuntimeOptions
    from kbundle.local.storage import StorageMap, default_storage_map

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        storage_map = StorageMap.parse(
            args.storage_map, default_storage_map(samples.default_models_dir())
        )
        _build_samples_if_needed(spec, storage_map)
        root = state_root(args.state_dir)
        state_dir = root / spec.name
        running = read_up_file(state_dir)
        if running:
            raise ConfigError(
                f"kbundle up is already running {spec.name} (pid {running['pid']}, REST port "
                f"{running['port']}); edit the file and it reloads, or stop that one first"
            )
        _log_to_file(state_dir / "up.log")
        runtime = RuntimeOptions(
            state_dir=state_dir,
            cache_dir=root / "models",
            storage_map=storage_map,
            default_scale_down_delay_s=parse_duration(args.scale_down_delay),
            activation_timeout_s=args.activation_timeout,
            console=not args.quiet,
            serving_runtimes=_serving_runtimes(args.runtimes),
        )
        options = UpOptions(
            manifest=manifest,
            host=args.host,
            port=args.port,
            grpc_port=args.grpc_port,
            runtime=runtime,
            watch_interval_s=args.watch_interval,
            drain_timeout_s=args.drain_timeout,
        )
        return asyncio.run(serve(options))
    except PortInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _serving_runtimes(folder: str | None) -> tuple:
    if folder is None:
        return ()
    from kbundle.manifests.runtimes import RuntimeResolutionError, load_runtimes

    try:
        return tuple(load_runtimes(folder))
    except RuntimeResolutionError as exc:
        raise ConfigError(str(exc)) from exc


def _build_samples_if_needed(spec, storage_map) -> None:
    """Build the sample models when a sample-bucket URI points at a missing folder (first run)."""
    variants = [spec.variant, *(v for _, v, _ in spec.standard_canaries)]
    uris = [
        uri for v in variants for c in (v.predictor, v.transformer) if c for uri, _ in c.storage
    ]
    missing = [
        u for u in uris if storage_map.uses_samples(u) and not Path(storage_map.resolve(u)).exists()
    ]
    if missing and storage_map.resolve("s3://kbundle-models").startswith(
        str(samples.default_models_dir())
    ):
        print(
            f"building the sample models for {missing[0]} (once) ...", file=sys.stderr, flush=True
        )
        try:
            samples.build_all()
        except ImportError as exc:
            raise ConfigError(
                f"{missing[0]} maps to {storage_map.resolve(missing[0])}, which does not exist, and the sample "
                f"models cannot be built here ({exc}); pip install 'kbundle[samples]' or map the bucket "
                "elsewhere with --storage-map"
            ) from exc


def _log_to_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
