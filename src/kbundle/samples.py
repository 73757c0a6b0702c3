"""Sample model repository built from scikit-learn's bundled 8x8 digits data set (no downloads).

`kbundle samples build` trains for a few seconds, exports ONNX, and caches the result keyed by
the recipe version, so later runs reuse it. Two versions of the digits model are built so canary
rollouts have a real "new model" to move traffic to.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RECIPE_VERSION = "2"  # 2: kbundle.yaml without `labels` (settings are strict)
DIGITS_INPUT = "input"


def cache_root() -> Path:
    """Where built sample models live: $KBUNDLE_CACHE or ~/.cache/kbundle."""
    return Path(os.environ.get("KBUNDLE_CACHE") or Path.home() / ".cache" / "kbundle")


def default_models_dir() -> Path:
    return cache_root() / "models"


@dataclass(frozen=True)
class DigitsSplit:
    """The held-out part of the digits set (never trained on), pixels 0..16 as the data set has."""

    images: np.ndarray  # (n, 8, 8) float64, 0..16
    labels: np.ndarray  # (n,) int64


def digits_split(seed: int = 0) -> tuple[DigitsSplit, DigitsSplit]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    return DigitsSplit(x_train, y_train.astype(np.int64)), DigitsSplit(
        x_test, y_test.astype(np.int64)
    )


def _train_digits(hidden: tuple[int, ...], seed: int):
    from sklearn.neural_network import MLPClassifier

    train, test = digits_split()
    model = MLPClassifier(hidden_layer_sizes=hidden, max_iter=400, random_state=seed)
    model.fit(train.images.reshape(len(train.images), -1), train.labels)
    accuracy = float(model.score(test.images.reshape(len(test.images), -1), test.labels))
    return model, accuracy


def _export_onnx(model, features: int, path: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onnx_model = to_onnx(
        model,
        initial_types=[(DIGITS_INPUT, FloatTensorType([None, features]))],
        options={id(model): {"zipmap": False}},
        target_opset=17,
    )
    path.write_bytes(onnx_model.SerializeToString())


def write_sha256sums(model_dir: Path) -> None:
    """SHA256SUMS in `sha256sum` format, so storage-init can verify what it fetched."""
    lines = []
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != "SHA256SUMS"):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(model_dir).as_posix()}\n")
    (model_dir / "SHA256SUMS").write_text("".join(lines))


DIGITS_VERSIONS = {
    # version -> (hidden layers, seed): v2 is a wider net, a real "new model" for canaries.
    "v1": ((32,), 1),
    "v2": ((64, 32), 2),
}


def build_digits(out_dir: Path, version: str) -> dict:
    hidden, seed = DIGITS_VERSIONS[version]
    model, accuracy = _train_digits(hidden, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    _export_onnx(model, 64, out_dir / "model.onnx")
    config = (
        "# kbundle model config (optional): serving settings that travel with this model version.\n"
        "# Precedence: CLI flag > env (KBUNDLE_*) > this file > built-in default.\n"
        f"model_version: digits-{version}\n"
        "max_batch_size: 32\n"
        "max_batch_delay_ms: 1.0\n"
        "warmup: true\n"
    )
    (out_dir / "kbundle.yaml").write_text(config)
    info = {
        "model": "digits",
        "version": version,
        "hidden": list(hidden),
        "held_out_accuracy": accuracy,
    }
    (out_dir / "model-info.json").write_text(json.dumps(info, indent=2) + "\n")
    write_sha256sums(out_dir)
    return info


DIGITS_TRANSFORMER_SPEC = """\
# kbundle transformer spec for the digits sample (python -m kbundle.transformers --model_dir <this dir>).
# Clients send 8x8 grayscale PNG/JPEG images (ink bright on dark, as the data set is); the predictor
# wants FP32 [N, 64] pixel values 0..16 and answers "label" and "probabilities".
inputs:
  - kind: image
    name: image            # the V2 BYTES input clients send
    tensor: input          # the predictor input it becomes
    color: L
    size: [8, 8]           # [height, width]; other sizes are resized
    resample: box
    scale: 0.06274509803921569   # 16/255: PNG 0..255 -> the data set's 0..16
    layout: flat           # [N, 8*8*1]
    datatype: FP32
outputs:
  - kind: topk
    tensor: probabilities
    k: 3
    labels: labels.txt
  - kind: tensor           # the model's own label, passed through
    tensor: label
    datatype: INT64
"""


def build_digits_transformer(out_dir: Path) -> None:
    """The transformer model dir for the digits model: transformer.yaml + labels.txt."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "transformer.yaml").write_text(DIGITS_TRANSFORMER_SPEC)
    (out_dir / "labels.txt").write_text("".join(f"{i}\n" for i in range(10)))
    write_sha256sums(out_dir)


def _build_transformer_samples(models_dir: Path, force: bool) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / "digits-transformer" / "v1"
    stamp = f"digits-transformer/v1 recipe={RECIPE_VERSION} spec={hashlib.sha256(DIGITS_TRANSFORMER_SPEC.encode()).hexdigest()[:12]}"
    stamp_file = target / ".kbundle-sample"
    if not force and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=models_dir))
    try:
        build_digits_transformer(staging)
        (staging / ".kbundle-sample").write_text(stamp)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stamp(name: str) -> str:
    import sklearn

    return f"{name} recipe={RECIPE_VERSION} sklearn={sklearn.__version__}"


def build_all(models_dir: Path | None = None, force: bool = False) -> Path:
    """Build every sample model (cached: skipped when the stamp matches). Returns the models dir."""
    models_dir = Path(models_dir or default_models_dir())
    for version in DIGITS_VERSIONS:
        target = models_dir / "digits" / version
        stamp = _stamp(f"digits/{version}")
        stamp_file = target / ".kbundle-sample"
        if not force and stamp_file.is_file() and stamp_file.read_text() == stamp:
            continue
        # Build beside the target and swap in, so a crash never leaves a half-built model.
        models_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=models_dir))
        try:
            build_digits(staging, version)
            stamp_path = staging / ".kbundle-sample"
            stamp_path.write_text(stamp)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    _build_transformer_samples(models_dir, force)
    return models_dir
