"""The CPUs this process may really use: its affinity, capped by the cgroup CPU quota.

Thread pools sized from the host's core count (ONNX Runtime's intra-op pool, torch, OpenMP/BLAS,
our executors) ignore both `taskset`/cpusets and the pod's `limits.cpu`; on a 64-core node a pod
limited to 1 CPU would spin 64 workers and be throttled by CFS. Every core-dependent default
derives from `cpu_budget()`; explicit settings still win. The cgroup root can be pointed at fake
files with KBUNDLE_CGROUP_ROOT (tests).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("kbundle.cpu")
CGROUP_ROOT_ENV = "KBUNDLE_CGROUP_ROOT"
DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"
CHILD_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class CpuBudget:
    cpus: float  # min(len(affinity), quota): what thread pools should be sized from
    affinity: frozenset[int]
    quota: float | None  # cgroup quota in CPUs, None when unlimited

    @property
    def threads(self) -> int:
        """Whole threads for a compute pool: the budget rounded up, at least 1."""
        return max(1, math.ceil(self.cpus - 1e-9))

    def describe(self) -> str:
        quota = "none" if self.quota is None else f"{self.quota:g}"
        cpus = ",".join(str(c) for c in sorted(self.affinity))
        return f"cpu budget {self.cpus:g} (affinity {{{cpus}}}, cgroup quota {quota})"


def _affinity() -> frozenset[int]:
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return frozenset(range(os.cpu_count() or 1))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup quota: v2 `cpu.max` ("max 100000" or "150000 100000"),
    else v1 `cpu/cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: unlimited); None when unlimited."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota == "max":
            return None
        return _ratio(quota, period or "100000")
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        quota = _read(folder / "cpu.cfs_quota_us")
        if quota is not None:
            return _ratio(quota, _read(folder / "cpu.cfs_period_us") or "100000")
    return None


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def detect(root: str | None = None) -> CpuBudget:
    affinity = _affinity()
    quota = cgroup_quota(Path(root or os.environ.get(CGROUP_ROOT_ENV) or DEFAULT_CGROUP_ROOT))
    cpus = float(len(affinity)) if quota is None else min(float(len(affinity)), quota)
    return CpuBudget(cpus=cpus, affinity=affinity, quota=quota)


@functools.cache
def cpu_budget() -> CpuBudget:
    """This process's budget, detected once."""
    return detect()


def apply_child_thread_env(budget: CpuBudget) -> dict[str, str]:
    """OMP/MKL/OpenBLAS thread counts for libraries loaded later (explicit env wins)."""
    set_now = {}
    for name in CHILD_THREAD_ENV:
        if name not in os.environ:
            os.environ[name] = set_now[name] = str(budget.threads)
    return set_now


def announce(budget: CpuBudget, derived: dict[str, object]) -> None:
    """The one start-up line, and the `kbundle_cpu_budget` gauge."""
    from kbundle.serving.metrics import CPU_BUDGET

    CPU_BUDGET.set(budget.cpus)
    detail = ", ".join(f"{k} {v}" for k, v in derived.items())
    logger.info("%s: %s", budget.describe(), detail)
