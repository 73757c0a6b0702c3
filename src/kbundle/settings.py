"""Typed model settings with one documented precedence: CLI flag > env > model config > default.

The model config is the optional `kbundle.yaml` in the model directory, so a new model version
can change its own serving settings without a new image. Every field below is also a flag
(`--max_batch_size`) and an env var (`KBUNDLE_MAX_BATCH_SIZE`).

Strict: a key of `kbundle.yaml` that is no setting is an error naming it and the closest valid
name (a typo must not serve the default silently); an unknown `KBUNDLE_*` variable is a warning
with the suggestion (the environment is shared with other programs). To add a setting, add one
field below (type, default, one-line doc); flag, env var, kbundle.yaml key and checks follow.
A `KBUNDLE_*` variable read elsewhere (not a setting) goes into OTHER_ENV_VARS.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kbundle.errors import ConfigError

MODEL_CONFIG_FILE = "kbundle.yaml"
ENV_PREFIX = "KBUNDLE_"
logger = logging.getLogger("kbundle.settings")
# kbundle.yaml keys read by other components (not predictor settings), with their reader.
OTHER_CONFIG_KEYS = {"build_engine": "storage-init engine step"}
# KBUNDLE_* variables read elsewhere; the unknown-variable warning leaves them alone.
OTHER_ENV_VARS = frozenset(
    {
        "KBUNDLE_CACHE",
        "KBUNDLE_REVISION",
        "KBUNDLE_CGROUP_ROOT",
        "KBUNDLE_GRPC_THREADS",
        "KBUNDLE_EXTRAS",
        "KBUNDLE_LOCK",
        "KBUNDLE_BUILDER",
        "KBUNDLE_IMAGE_CACHE",
        "KBUNDLE_BIND_HOST",
        "KBUNDLE_BODY_TIMEOUT_S",
        "KBUNDLE_HEADER_TIMEOUT_S",
        "KBUNDLE_MAX_CONNECTIONS",
        "KBUNDLE_MAX_HEADERS",
        "KBUNDLE_MAX_HEADER_BYTES",
        "KBUNDLE_DECODE_BUDGET_BYTES",
        "KBUNDLE_DECODE_WAIT_MS",
    }
)
OTHER_ENV_PREFIXES = ("KBUNDLE_STORAGE_", "KBUNDLE_WORKERS")  # workers: --workers internals


def _doc(text: str, **extra: Any) -> dict:
    return {"doc": text, **extra}


@dataclass(frozen=True)
class ModelSettings:
    """What the predictor needs to load and serve one engine."""

    engine: str = field(
        default="auto",
        metadata=_doc(
            "Engine: auto (from the file in the model dir), onnx, tensorrt or torch.",
            choices=("auto", "onnx", "tensorrt", "torch"),
        ),
    )
    device: str = field(
        default="auto",
        metadata=_doc(
            "Device: auto (GPU when usable), cuda or cpu.", choices=("auto", "cuda", "cpu")
        ),
    )
    execution_providers: tuple[str, ...] = field(
        default=(),
        metadata=_doc(
            "ONNX Runtime providers in order of preference; empty = TensorRT, CUDA, CPU "
            "filtered by what is installed."
        ),
    )
    max_batch_size: int = field(
        default=32,
        metadata=_doc(
            "Most rows the dynamic batcher puts in one engine call; 0 disables batching."
        ),
    )
    max_batch_delay_ms: float = field(
        default=1.0,
        metadata=_doc("Longest the oldest queued request waits for a batch to fill (ms)."),
    )
    instances: int = field(default=1, metadata=_doc("Engine instances (one batch in flight each)."))
    max_request_bytes: int = field(
        default=0,
        metadata=_doc(
            "Largest REST body / gRPC message (413 / RESOURCE_EXHAUSTED above it, refused while "
            "reading); 0 = a quarter of the cgroup memory limit (at most 1 GiB), else 64 MiB."
        ),
    )
    max_queue_size: int = field(
        default=256,
        metadata=_doc(
            "Most requests waiting for a batch; one more is refused at once (429 + Retry-After / "
            "RESOURCE_EXHAUSTED); 0 = unbounded."
        ),
    )
    max_queue_delay_ms: float = field(
        default=0.0,
        metadata=_doc(
            "Longest any request may wait in the queue before it is dropped unrun (504 / "
            "DEADLINE_EXCEEDED), on top of each request's own deadline; 0 = no cap."
        ),
    )
    max_request_rows: int = field(
        default=-1,
        metadata=_doc(
            "Most rows one request may carry (400 above it); -1 = max_batch_size when batching, "
            "0 = no limit."
        ),
    )
    intra_op_threads: int = field(
        default=0, metadata=_doc("Engine CPU threads per call; 0 = the engine's own default.")
    )
    engine_on_loop_ms: float = field(
        default=-1.0,
        metadata=_doc(
            "Run a batch on the event-loop thread, not the engine thread, when it should take at "
            "most this long (ms); -1 = 0.5 for a CPU engine with a CPU budget of one CPU, else 0 "
            "(always the engine thread)."
        ),
    )
    warmup: bool = field(
        default=True, metadata=_doc("Run a warm-up inference before reporting ready.")
    )
    fp16: bool = field(
        default=False, metadata=_doc("Build/run GPU engines in FP16 where supported.")
    )
    engine_cache_dir: str = field(
        default="",
        metadata=_doc("Where GPU engines built at start-up are cached (default: model dir)."),
    )
    precision: str = field(
        default="auto",
        metadata=_doc(
            "Engine precision: auto (fp16 when `fp16` is set, else fp32), fp32, fp16, bf16 "
            "(Torch) or int8 (TensorRT build, calibrated from calibration.npz).",
            choices=("auto", "fp32", "fp16", "bf16", "int8"),
        ),
    )
    profile_batch: tuple[int, ...] = field(
        default=(1, 8, 32),
        metadata=_doc("TensorRT optimization profile for the batch (leading) dim: min,opt,max."),
    )
    profile_seq: tuple[int, ...] = field(
        default=(),
        metadata=_doc(
            "TensorRT optimization profile for every other dynamic dim (e.g. sequence): "
            "min,opt,max; required when the model has such dims."
        ),
    )
    cuda_graphs: bool = field(
        default=False,
        metadata=_doc(
            "Torch on CUDA: capture a CUDA graph per batch bucket and pad requests up to it."
        ),
    )
    batch_buckets: tuple[int, ...] = field(
        default=(1, 8, 32),
        metadata=_doc("Batch sizes CUDA graphs are captured for (cuda_graphs: true)."),
    )
    model_version: str = field(
        default="",
        metadata=_doc("Version reported as V2 model_version (e.g. the revision serving it)."),
    )
    padding: dict[str, Any] | None = field(
        default=None,
        metadata=_doc(
            "Padding-aware batching (a mapping: dim, buckets, pad_values, mask; see "
            "docs/batching.md). Env/flag take it as JSON."
        ),
    )

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))


def effective_precision(settings: ModelSettings) -> str:
    """The one precision engines use: `precision` unless auto, then `fp16: true` means fp16."""
    if settings.precision != "auto":
        return settings.precision
    return "fp16" if settings.fp16 else "fp32"


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def closest(name: str, valid: list[str] | tuple[str, ...]) -> str | None:
    """The valid name a typo most likely meant, or None when nothing is close."""
    matches = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown(name: str, valid: tuple[str, ...]) -> str:
    guess = closest(name, valid)
    return f"{name!r} (did you mean {guess!r}?)" if guess else repr(name)


def check_config_keys(
    model_config: Mapping[str, Any], config_name: str = MODEL_CONFIG_FILE
) -> None:
    """ConfigError naming every key of the model config that is no setting, with the closest."""
    valid = ModelSettings.field_names()
    unknown = sorted(str(k) for k in model_config if k not in valid and k not in OTHER_CONFIG_KEYS)
    if unknown:
        named = ", ".join(_unknown(key, valid) for key in unknown)
        raise ConfigError(f"{config_name}: unknown setting {named}; settings: {', '.join(valid)}")


def unknown_env_vars(env: Mapping[str, str]) -> list[str]:
    """One message per KBUNDLE_* variable that no part of kbundle reads, with the closest name."""
    valid = tuple(env_name(f) for f in ModelSettings.field_names())
    return [
        f"environment variable {_unknown(var, valid + tuple(OTHER_ENV_VARS))} is not a kbundle "
        "setting and is ignored"
        for var in sorted(env)
        if var.startswith(ENV_PREFIX)
        and var not in valid
        and var not in OTHER_ENV_VARS
        and not var.startswith(OTHER_ENV_PREFIXES)
    ]


def read_model_config(model_dir: str | os.PathLike) -> dict[str, Any]:
    """The model dir's `kbundle.yaml` as a dict ({} when absent); ConfigError when malformed."""
    path = Path(model_dir) / MODEL_CONFIG_FILE
    if not path.is_file():
        return {}
    from kbundle.manifests.yamlguard import YamlLimitError, check_text

    try:
        text = path.read_text(encoding="utf-8")
        check_text(text)  # a model from a bucket is input too: bounded, one line when hostile
        data = yaml.safe_load(text) or {}
    except YamlLimitError as exc:
        raise ConfigError(f"{path}:{exc.line}: {exc.message}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _coerce(name: str, kind: Any, value: Any, source: str) -> Any:
    """Turn a flag, env string or YAML value into the field's type, naming the source on failure."""
    try:
        if kind in (bool, "bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if kind in (int, "int"):
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind in (float, "float"):
            return float(value)
        if kind in ("tuple[int, ...]",):
            parts = value.split(",") if isinstance(value, str) else value
            return tuple(int(part) for part in parts if str(part).strip())
        if kind == "dict[str, Any] | None":
            data = yaml.safe_load(value) if isinstance(value, str) else value
            if not isinstance(data, dict):
                raise ValueError(value)
            return data
        if kind in ("tuple[str, ...]",):
            if isinstance(value, str):
                return tuple(part.strip() for part in value.split(",") if part.strip())
            return tuple(str(part) for part in value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} from {source}: cannot read {value!r} as {kind}") from exc


def _check(settings: ModelSettings) -> ModelSettings:
    for f in dataclasses.fields(settings):
        choices = f.metadata.get("choices")
        if choices and getattr(settings, f.name) not in choices:
            raise ConfigError(
                f"{f.name}: {getattr(settings, f.name)!r} is not one of {list(choices)}"
            )
    if settings.max_batch_size < 0:
        raise ConfigError("max_batch_size must be >= 0")
    if settings.max_batch_delay_ms < 0:
        raise ConfigError("max_batch_delay_ms must be >= 0")
    if settings.engine_on_loop_ms < 0 and settings.engine_on_loop_ms != -1:
        raise ConfigError("engine_on_loop_ms must be >= 0, or -1 (derived)")
    if settings.max_request_bytes < 0:
        raise ConfigError("max_request_bytes must be >= 0 (0 = derived from the memory limit)")
    if settings.max_queue_size < 0 or settings.max_queue_delay_ms < 0:
        raise ConfigError("max_queue_size and max_queue_delay_ms must be >= 0")
    if settings.max_request_rows < -1:
        raise ConfigError("max_request_rows must be -1 (auto), 0 (no limit) or a row count")
    if settings.instances < 1:
        raise ConfigError("instances must be >= 1")
    if settings.profile_batch and (
        len(settings.profile_batch) != 3
        or not 1
        <= settings.profile_batch[0]
        <= settings.profile_batch[1]
        <= settings.profile_batch[2]
    ):
        raise ConfigError(
            f"profile_batch must be min,opt,max with 1 <= min <= opt <= max, got {list(settings.profile_batch)}"
        )
    if settings.profile_seq and (
        len(settings.profile_seq) != 3
        or not 1 <= settings.profile_seq[0] <= settings.profile_seq[1] <= settings.profile_seq[2]
    ):
        raise ConfigError(
            f"profile_seq must be min,opt,max with 1 <= min <= opt <= max, got {list(settings.profile_seq)}"
        )
    if any(b < 1 for b in settings.batch_buckets):
        raise ConfigError(f"batch_buckets must be positive, got {list(settings.batch_buckets)}")
    return settings


def resolve_settings(
    model_config: Mapping[str, Any],
    flags: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_name: str = MODEL_CONFIG_FILE,
) -> ModelSettings:
    """Merge the sources with the documented precedence: flag > env > model config > default.

    `flags` holds parsed CLI values, None meaning "not given". An unknown model-config key is a
    ConfigError (OTHER_CONFIG_KEYS excepted); an unknown KBUNDLE_* variable is logged as a warning.
    """
    flags = flags or {}
    env = os.environ if env is None else env
    check_config_keys(model_config, config_name)
    for message in unknown_env_vars(env):
        logger.warning(message)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ModelSettings):
        for source, value in (
            ("flag --" + f.name, flags.get(f.name)),
            ("env " + env_name(f.name), env.get(env_name(f.name))),
            (config_name, model_config.get(f.name)),
        ):
            if value is not None:
                values[f.name] = _coerce(f.name, f.type, value, source)
                break
    return _check(ModelSettings(**values))


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; defaults stay None so "not given" falls through to env/config."""
    group = parser.add_argument_group(
        "kbundle model settings (flag > env > kbundle.yaml > default)"
    )
    for f in dataclasses.fields(ModelSettings):
        group.add_argument(
            f"--{f.name}",
            default=None,
            choices=f.metadata.get("choices"),
            help=f"{f.metadata['doc']} Env {env_name(f.name)}. Default: {f.default!r}.",
        )
