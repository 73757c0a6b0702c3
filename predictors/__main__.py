"""`python -m kbundle.predictors --model_name NAME --model_dir DIR [kserve flags] [setting flags]`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from kserve import model_server

from kbundle import cpu_budget
from kbundle.errors import ConfigError
from kbundle.predictors import model_config
from kbundle.predictors.predictor import EnginePredictor
from kbundle.predictors.workers.flag import add_workers_flag, exit_with_parent, resolve_workers
from kbundle.serving.grpc_sizing import grpc_threads
from kbundle.serving.lifecycle import add_drain_flag
from kbundle.serving.limits import HttpLimits
from kbundle.serving.server import KbundleModelServer, loop_executor_workers
from kbundle.settings import ModelSettings, add_setting_flags, read_model_config, resolve_settings

logger = logging.getLogger("kbundle.predictor")
DEFAULT_MODEL_DIR = "/mnt/models"
# The engine thread releases the GIL inside the engine and must get it back to hand results to
# the event loop. With Python's default 5 ms switch interval a busy loop thread keeps it for up to
# 5 ms per batch (a GIL convoy): measured on the MLP over REST at concurrency 32, one core,
# 2,304 infer/s at 5 ms vs 3,065 at 0.5 ms (docs/benchmarks.md).
GIL_SWITCH_INTERVAL_S = 0.0005


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m kbundle.predictors",
        parents=[model_server.parser],
        conflict_handler="resolve",
    )
    parser.add_argument(
        "--model_dir",
        default=DEFAULT_MODEL_DIR,
        help="Model directory (KServe mounts it at /mnt/models).",
    )
    add_setting_flags(parser)
    add_drain_flag(parser)
    add_workers_flag(parser)
    return parser


def budget_settings(
    settings: ModelSettings,
    args: argparse.Namespace,
    front_ends: int = 0,
    budget: cpu_budget.CpuBudget | None = None,
) -> ModelSettings:
    """Core-dependent defaults from the CPU budget (explicit settings win), logged once.
    `front_ends`: CPUs the `--workers` front ends take from the engine owner's share."""
    budget = budget or cpu_budget.cpu_budget()
    settings, intra_op = engine_threads(settings, budget, front_ends)
    child_env = cpu_budget.apply_child_thread_env(budget)
    derived: dict[str, object] = {"intra_op_threads": intra_op}
    if not front_ends:  # the `--workers` engine owner serves no gRPC and runs no serving loop
        derived["grpc_threads"] = max(args.max_threads or 0, grpc_threads([settings]))
        derived["loop_executor_threads"] = loop_executor_workers(args.max_asyncio_workers)
    derived.update((k.lower(), v) for k, v in child_env.items())
    cpu_budget.announce(budget, derived)
    return settings


def engine_threads(
    settings: ModelSettings, budget: cpu_budget.CpuBudget, front_ends: int
) -> tuple[ModelSettings, str]:
    """The engine's intra-op threads per instance, and how the start-up line reports them.

    Under `--workers` the engine owner gets the budget *less* the front ends (at least 1), not
    the whole budget: under load the front ends decode the next requests while a batch runs,
    and ONNX Runtime's intra-op threads spin between runs, so a pool as wide as the budget
    takes the front ends' CPUs exactly when the pod is busy (and a cgroup quota throttles the
    whole pod). `--workers auto` spends the budget on front ends, which suits models that cost
    less than their decode; an engine-bound model lowers --workers, giving the engine the rest.
    """
    engine_cpus = owner_cpus(budget, front_ends)
    if settings.intra_op_threads:  # explicit: kept, but said when it takes the front ends' CPUs
        if front_ends and settings.intra_op_threads > engine_cpus:
            _warn_overlap(settings.intra_op_threads, engine_cpus, budget, front_ends)
        return settings, f"{settings.intra_op_threads}" + (" (set)" if front_ends else "")
    # 0 (not set) would leave the engine's own default, which counts the host's cores.
    per_instance = max(1, engine_cpus // max(1, settings.instances))
    settings = dataclasses.replace(settings, intra_op_threads=per_instance)
    if not front_ends:
        return settings, f"{per_instance}"
    return settings, f"{per_instance} (budget {budget.threads} less {front_ends} front ends)"


def owner_cpus(budget: cpu_budget.CpuBudget, front_ends: int) -> int:
    """The CPUs of the budget left to the engine (and, in the `--workers` engine owner, its
    event loop) after the front ends: at least 1."""
    return max(1, budget.threads - front_ends)


def _warn_overlap(
    threads: int, engine_cpus: int, budget: cpu_budget.CpuBudget, front_ends: int
) -> None:
    logger.warning(
        "intra_op_threads %d is set, above the %d the cpu budget %g leaves after %d front ends: "
        "the engine's threads take their CPUs; unset it to get %d",
        threads,
        engine_cpus,
        budget.cpus,
        front_ends,
        engine_cpus,
    )


def settings_for(args: argparse.Namespace) -> ModelSettings:
    config = read_model_config(args.model_dir)  # an unknown key is an error (resolve_settings)
    flags = {name: getattr(args, name, None) for name in ModelSettings.field_names()}
    return resolve_settings(config, flags)


def setup_process(argv: list[str] | None, role: str) -> argparse.Namespace:
    """Arguments, logging and interpreter settings shared by every predictor process."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s %(levelname)s %(name)s[{role}]: %(message)s"
    )
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    if role != "predictor":
        exit_with_parent()
    return args


def load_predictor(args: argparse.Namespace, front_ends: int = 0) -> EnginePredictor | int:
    """The loaded, warmed-up predictor, or the exit code after a one-line error."""
    budget = cpu_budget.cpu_budget()
    try:
        settings = budget_settings(settings_for(args), args, front_ends, budget)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # The engine owner's loop and engine share what the front ends leave: with one CPU there,
    # short batches run on its loop (engine_on_loop_ms) instead of a thread hop per batch.
    engine_cpus = owner_cpus(budget, front_ends) if front_ends else None
    predictor = EnginePredictor(args.model_name, args.model_dir, settings, engine_cpus)
    if not predictor.load():
        print(
            f"error: model '{args.model_name}' failed to load: {predictor.load_error}",
            file=sys.stderr,
        )
        return 1
    return predictor


def main(argv: list[str] | None = None) -> int:
    args = setup_process(argv, "predictor")
    workers = resolve_workers(args.workers)
    if workers > 1:
        from kbundle.predictors.workers.supervisor import Supervisor

        return Supervisor(args, sys.argv[1:] if argv is None else list(argv), workers).run()
    predictor = load_predictor(args)
    if isinstance(predictor, int):
        return predictor
    KbundleModelServer(
        args,
        rest_hooks=[model_config.rest_hook],
        grpc_hooks=[model_config.grpc_hook],
        http_limits=HttpLimits.from_env(predictor.settings.max_request_bytes),
    ).start([predictor])
    return 0


if __name__ == "__main__":
    sys.exit(main())
