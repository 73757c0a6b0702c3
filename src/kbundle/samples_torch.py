"""A small PyTorch digits classifier: the one model every engine serves in tests and benchmarks.

Same signature as the ONNX sample (input FP32 [-1, 64] pixels 0..16; outputs label INT64 [-1],
probabilities FP32 [-1, 10]), trained for a second on scikit-learn's bundled digits, so ORT,
torch.export, AOTInductor and TensorRT can be compared on one model. `width` scales it up for
benchmarks where a 64-wide MLP would only measure overhead.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from kbundle.specs import TensorSpec

INPUTS = (TensorSpec("input", "FP32", (-1, 64)),)
OUTPUTS = ("label", "probabilities")


def digits_model(width: int = 128, depth: int = 2, train_steps: int = 150, seed: int = 0):
    """A trained MLP (64 -> width x depth -> 10) returning (label, probabilities)."""
    import torch
    from torch import nn

    from kbundle.samples import digits_split

    torch.manual_seed(seed)

    class DigitsMLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            size = 64
            for _ in range(depth):
                layers += [nn.Linear(size, width), nn.ReLU()]
                size = width
            layers.append(nn.Linear(size, 10))
            self.body = nn.Sequential(*layers)

        def forward(self, input: torch.Tensor):  # noqa: A002 - the V2 input is named "input"
            probabilities = torch.softmax(self.body(input / 16.0), dim=-1)
            return torch.argmax(probabilities, dim=-1), probabilities

    model = DigitsMLP()
    if train_steps:
        train, _ = digits_split()
        x = torch.tensor(train.images.reshape(len(train.images), -1), dtype=torch.float32)
        y = torch.tensor(train.labels)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        threads = torch.get_num_threads()
        torch.set_num_threads(
            1
        )  # tiny matmuls: more threads only contend (10x slower on a busy box)
        try:
            with (
                torch.inference_mode(False),
                torch.enable_grad(),
            ):  # callers may sit in inference_mode
                for _ in range(train_steps):
                    optimizer.zero_grad()
                    loss = nn.functional.cross_entropy(model.body(x / 16.0), y)
                    loss.backward()
                    optimizer.step()
        finally:
            torch.set_num_threads(threads)
    return model.eval()


RECIPE_VERSION = "2"


def build_torch_digits(models_dir: Path | None = None, force: bool = False) -> Path:
    """`<models>/digits-torch/v1` with model.pt2 (torch.export) and model.onnx, via `kbundle export`.

    Cached like the ONNX samples (keyed by recipe and torch version): the export and its numeric
    checks run once per machine, not per test session.
    """
    import torch

    from kbundle import cli, samples

    target = Path(models_dir or samples.default_models_dir()) / "digits-torch" / "v1"
    stamp = f"digits-torch recipe={RECIPE_VERSION} torch={torch.__version__}"
    stamp_file = target / ".kbundle-sample"
    if not force and stamp_file.is_file() and stamp_file.read_text() == stamp:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        code = cli.main(
            [
                "export",
                "--model",
                "kbundle.samples_torch:digits_model",
                "--out",
                str(staging),
                "--format",
                "onnx,program",
            ]
        )
        if code != 0:
            raise RuntimeError(f"kbundle export failed with exit code {code}")
        (staging / "kbundle.yaml").write_text(
            "model_version: digits-torch-v1\nmax_batch_size: 32\n"
        )
        samples.write_sha256sums(staging)
        stamp_file_new = staging / ".kbundle-sample"
        stamp_file_new.write_text(stamp)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
