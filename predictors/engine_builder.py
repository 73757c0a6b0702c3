"""ONNX -> TensorRT plan, with a cache keyed by everything that makes a plan non-portable.

A plan only loads on the GPU architecture and TensorRT version that built it, and only serves
the shapes and precision it was built for. So the cache key is (ONNX file digest, GPU compute
capability, TensorRT version, precision, optimization-profile shapes, calibration-set digest):
the same key is reused, a different GPU gets its own entry, and an entry whose stored digest no
longer matches its bytes is thrown away and rebuilt rather than served.

The cache logic takes the build function and the target as arguments, so it is tested without
a GPU; `tensorrt_build` is the real TensorRT build (see `tensorrt_build.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kbundle.errors import EngineLoadError
from kbundle.settings import ModelSettings, effective_precision

logger = logging.getLogger("kbundle.engine_builder")

ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
CALIBRATION_FILE = "calibration.npz"
CACHE_DIR_NAME = ".kbundle-engines"
KEY_VERSION = "1"  # bump when the build recipe changes what a key means


@dataclass(frozen=True)
class Target:
    """The machine a plan is built for: what decides whether a plan is portable to it."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str


@dataclass(frozen=True)
class BuildSpec:
    """What to build: the ONNX file, the precision and the optimization profile."""

    onnx_path: Path
    precision: str  # fp32 | fp16 | int8
    profile_batch: tuple[int, int, int]
    profile_seq: tuple[int, ...]  # () or (min, opt, max) for every non-batch dynamic dim
    calibration_path: Path | None = None  # int8 only

    def key_fields(self) -> dict:
        return {
            "precision": self.precision,
            "profile_batch": list(self.profile_batch),
            "profile_seq": list(self.profile_seq),
        }


BuildFn = Callable[[BuildSpec, Path], None]  # writes the serialized plan to the given path
TargetFn = Callable[[], Target]  # raises EngineLoadError when no GPU/TensorRT is here


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_key(spec: BuildSpec, target: Target) -> str:
    """Stable key over every input that changes the plan (names the GPU arch for humans)."""
    fields = {
        "key_version": KEY_VERSION,
        "onnx_sha256": file_digest(spec.onnx_path),
        "compute_capability": target.compute_capability,
        "tensorrt_version": target.tensorrt_version,
        **spec.key_fields(),
        "calibration_sha256": file_digest(spec.calibration_path) if spec.calibration_path else "",
    }
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]
    return f"sm{target.compute_capability.replace('.', '')}-trt{target.tensorrt_version}-{spec.precision}-{digest}"


class EngineCache:
    """Cache entries `<root>/<key>/{model.plan, model.plan.json}`; the JSON holds the plan's digest."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def lookup(self, key: str) -> Path | None:
        """The cached plan for `key`, verified against its stored digest; None (and removed) if corrupt."""
        entry = self.root / key
        plan, meta_path = entry / PLAN_FILE, entry / (PLAN_FILE + ".json")
        if not entry.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if plan.is_file() and meta["plan_sha256"] == file_digest(plan) and meta["key"] == key:
                return plan
            reason = "digest mismatch"
        except (OSError, ValueError, KeyError) as exc:
            reason = f"unreadable metadata ({exc})"
        logger.warning("engine cache entry %s is corrupt (%s): rebuilding it", entry, reason)
        shutil.rmtree(entry, ignore_errors=True)
        return None

    def store(self, key: str, build: Callable[[Path], None], meta: dict) -> Path:
        """Build into a staging dir beside the entry and rename it in: never a half-written entry."""
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            build(staging / PLAN_FILE)
            meta = {**meta, "key": key, "plan_sha256": file_digest(staging / PLAN_FILE)}
            (staging / (PLAN_FILE + ".json")).write_text(json.dumps(meta, indent=2) + "\n")
            entry = self.root / key
            shutil.rmtree(entry, ignore_errors=True)
            staging.rename(entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return entry / PLAN_FILE


def build_spec(model_dir: Path, settings: ModelSettings) -> BuildSpec:
    precision = effective_precision(settings)
    if precision == "bf16":
        precision = "fp16"  # TensorRT plans here are built fp16; bf16 is a Torch-engine option
    calibration = model_dir / CALIBRATION_FILE
    if precision == "int8" and not calibration.is_file():
        raise EngineLoadError(
            f"precision int8 needs a calibration set {calibration} (arrays named after the inputs)"
        )
    batch = profile_batch_of(settings)
    return BuildSpec(
        onnx_path=model_dir / ONNX_FILE,
        precision=precision,
        profile_batch=batch,  # type: ignore[arg-type]
        profile_seq=tuple(settings.profile_seq),
        calibration_path=calibration if precision == "int8" else None,
    )


def profile_batch_of(settings: ModelSettings) -> tuple[int, int, int]:
    """profile_batch, or (when emptied) 1..max_batch_size so the batcher's batches always fit."""
    if settings.profile_batch:
        return tuple(settings.profile_batch)  # type: ignore[return-value]
    top = max(settings.max_batch_size, 1)
    return (1, min(8, top), top)


def cache_root(model_dir: Path, settings: ModelSettings) -> Path:
    return (
        Path(settings.engine_cache_dir) if settings.engine_cache_dir else model_dir / CACHE_DIR_NAME
    )


def ensure_plan(
    model_dir: Path, settings: ModelSettings, target: Target, build_fn: BuildFn
) -> Path:
    """The model dir's `model.plan`, from the cache or freshly built, for this target.

    The plan is linked (or copied) into the model dir with its metadata, so the predictor's
    engine detection finds it and can refuse it in words if the pod lands on another GPU.
    """
    model_dir = Path(model_dir)
    spec = build_spec(model_dir, settings)
    key = cache_key(spec, target)
    cache = EngineCache(cache_root(model_dir, settings))
    plan = cache.lookup(key)
    if plan is None:
        logger.info("building TensorRT engine %s from %s", key, spec.onnx_path)
        meta = {**asdict(target), **spec.key_fields(), "onnx_sha256": file_digest(spec.onnx_path)}
        plan = cache.store(key, lambda out: build_fn(spec, out), meta)
    else:
        logger.info("reusing cached TensorRT engine %s", key)
    _install(plan, model_dir / PLAN_FILE)
    _install(plan.with_name(PLAN_FILE + ".json"), model_dir / (PLAN_FILE + ".json"))
    return model_dir / PLAN_FILE


def _install(src: Path, dest: Path) -> None:
    """Atomically place `src` at `dest` (hard link when on one filesystem, else a copy)."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def detect_target() -> Target:
    """This machine's GPU and TensorRT; EngineLoadError saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineLoadError(f"tensorrt is not installed ({exc})") from exc
    from kbundle.predictors import cuda_device

    gpu = cuda_device.gpu_info(0)
    return Target(gpu.name, gpu.compute_capability, trt.__version__)


def build_engine(model_dir: Path, settings: ModelSettings) -> Path | None:
    """Storage-init's hook: build (or reuse) the plan; None, with one log line, when not possible here."""
    model_dir = Path(model_dir)
    if not (model_dir / ONNX_FILE).is_file():
        logger.info("no %s in %s: no TensorRT engine to build", ONNX_FILE, model_dir)
        return None
    if settings.device == "cpu" or settings.engine not in ("auto", "tensorrt"):
        logger.info(
            "engine build skipped: settings ask for engine=%s device=%s",
            settings.engine,
            settings.device,
        )
        return None
    plan = model_dir / PLAN_FILE
    if plan.is_file() and not plan.with_name(PLAN_FILE + ".json").is_file():
        logger.info("%s was shipped with the model (not built by kbundle): kept as is", plan)
        return plan
    try:
        target = detect_target()
    except EngineLoadError as exc:
        logger.info("no TensorRT engine built: %s", exc)
        return None
    from kbundle.predictors.tensorrt_build import build_plan

    return ensure_plan(model_dir, settings, target, build_plan)
