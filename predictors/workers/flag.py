"""The `--workers` flag: a number, or `auto` (the default) for one per CPU of the budget."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal

from kbundle import cpu_budget

WORKERS_ENV = "KBUNDLE_WORKERS"  # the flag's default when set (tests pin the single process)
PR_SET_PDEATHSIG = 1


def parse_workers(value: str) -> int:
    """0 for `auto`, else a count of at least 1."""
    if value == "auto":
        return 0
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a whole number >= 1, got {value!r}")
    return count


def add_workers_flag(parser: argparse.ArgumentParser) -> None:
    """Replaces kserve's `--workers` (which pickles the model into spawned copies)."""
    parser.add_argument(
        "--workers",
        type=parse_workers,
        default=parse_workers(os.environ.get(WORKERS_ENV, "auto")),
        help="Protocol front-end processes sharing the ports and one engine (docs/workers.md); "
        "'auto' (default): one per CPU of the budget (affinity and cgroup quota), and with one "
        "CPU a single process.",
    )


def resolve_workers(workers: int) -> int:
    return workers or cpu_budget.cpu_budget().threads


def exit_with_parent() -> None:
    """A child of the supervisor gets SIGTERM when the supervisor dies, however it dies."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the supervisor's own shutdown still stops it
        pass
