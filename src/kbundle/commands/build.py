"""`kbundle build MODEL_DIR [setting flags]`: model.onnx -> model.plan for this GPU, cached."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kbundle.errors import ConfigError, EngineLoadError
from kbundle.settings import ModelSettings, add_setting_flags, read_model_config, resolve_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model_dir", help="model dir holding model.onnx (and calibration.npz for int8)"
    )
    add_setting_flags(parser)


def run(args: argparse.Namespace) -> int:
    from kbundle.predictors import engine_builder

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model_dir = Path(args.model_dir)
    try:
        config = read_model_config(model_dir)
        flags = {name: getattr(args, name, None) for name in ModelSettings.field_names()}
        settings = resolve_settings(
            {k: v for k, v in config.items() if k in ModelSettings.field_names()}, flags
        )
        if not (model_dir / engine_builder.ONNX_FILE).is_file():
            raise EngineLoadError(f"{model_dir / engine_builder.ONNX_FILE} does not exist")
        target = engine_builder.detect_target()
        from kbundle.predictors.tensorrt_build import build_plan

        plan = engine_builder.ensure_plan(model_dir, settings, target, build_plan)
    except (ConfigError, EngineLoadError) as exc:
        print(f"error: cannot build a TensorRT engine: {exc}", file=sys.stderr)
        return 1
    print(
        f"{plan} ({target.gpu_name}, sm {target.compute_capability}, TensorRT {target.tensorrt_version})"
    )
    return 0
