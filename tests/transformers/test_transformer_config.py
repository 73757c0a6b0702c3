"""Start-up behaviour: protocol flags (with kserve's ignored `--protocol` honoured as an alias),
spec errors named at load time, and the feature kinds on their own (in-process, real Pillow)."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kbundle.errors import ConfigError, InvalidRequest
from kbundle.serving.server import check_workers
from kbundle.transformers.__main__ import build_parser, hop_config, resolve_protocol
from kbundle.transformers.hop import forwardable
from kbundle.transformers.hop_grpc import grpc_target
from kbundle.transformers.pipeline import Pipeline

BASE = ["--model_name", "digits", "--predictor_host", "127.0.0.1:9"]


def _args(*extra: str):
    return build_parser().parse_args([*BASE, *extra])


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((), "grpc-v2"),
        (("--predictor_protocol", "v2"), "v2"),
        (("--protocol", "v2"), "v2"),  # kserve ignores --protocol; we honour it
        (("--protocol", "grpc-v2", "--predictor_protocol", "grpc-v2"), "grpc-v2"),
    ],
)
def test_protocol_flags(flags, expected):
    assert resolve_protocol(_args(*flags)) == expected


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--protocol", "v2", "--predictor_protocol", "grpc-v2"), "disagree"),
        (("--protocol", "v1"), "speaks V2"),
        (("--predictor_protocol", "v1"), "speaks V2"),
    ],
)
def test_conflicting_or_v1_protocol_is_refused(flags, message):
    with pytest.raises(SystemExit, match=message):
        resolve_protocol(_args(*flags))


def test_workers_from_the_controller_fall_back_to_one():
    args = _args("--workers", "4")
    check_workers(args, "transformer", refuse=False)
    assert args.workers == 1
    assert hop_config(args).timeout_s == 60.0


def test_v1_protocol_process_exits_with_a_clear_message(sample_models):
    spec = sample_models / "digits-transformer" / "v1"
    cmd = [
        sys.executable,
        "-m",
        "kbundle.transformers",
        *BASE,
        "--protocol",
        "v1",
        "--model_dir",
        str(spec),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "speaks V2" in done.stderr


@pytest.mark.parametrize(
    ("host", "ssl", "target"),
    [
        ("digits-predictor.default", False, "digits-predictor.default:80"),
        ("digits-predictor.default", True, "digits-predictor.default:443"),
        ("127.0.0.1:8081", False, "127.0.0.1:8081"),
        ("[::1]", False, "[::1]:80"),
        ("[::1]:9000", False, "[::1]:9000"),
    ],
)
def test_grpc_target_gets_kserves_default_port(host, ssl, target):
    assert grpc_target(host, ssl) == target


def test_only_identity_trace_and_auth_headers_are_forwardable():
    headers = {
        "X-Request-Id": "r",
        "X-B3-ParentSpanId": "p",
        "b3": "x",
        "traceparent": "t",
        "tracestate": "s",
        "Authorization": "Bearer a",
        "cookie": "c",
        "x-custom": "y",
    }
    assert forwardable(headers) == {
        "x-request-id": "r",
        "x-b3-parentspanid": "p",
        "b3": "x",
        "traceparent": "t",
        "tracestate": "s",
        "authorization": "Bearer a",
    }


def _spec(tmp_path: Path, text: str) -> Path:
    (tmp_path / "transformer.yaml").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("inputs: []\noutputs: []\n", "'inputs' must be a non-empty list"),
        ("inputs: [{kind: audio}]\noutputs: [{kind: tensor, tensor: y}]\n", "needs 'kind'"),
        (
            "inputs: [{kind: image, tensor: x, colour: L}]\noutputs: [{kind: tensor, tensor: y}]\n",
            "unknown key(s) ['colour']",
        ),
        ("inputs: [{kind: image}]\noutputs: [{kind: tensor, tensor: y}]\n", "'tensor' is required"),
        (
            "inputs: [{kind: image, tensor: x, layout: CHW}]\noutputs: [{kind: tensor, tensor: y}]\n",
            "'layout' must be one of",
        ),
        (
            "inputs: [{kind: text, tensor: x}]\noutputs: [{kind: tensor, tensor: y}]\n",
            "tokenizer file",
        ),
        (
            "inputs: [{kind: tabular, tensor: x, columns: [{name: c, type: categorical, vocabulary: [a, a]}]}]\n"
            "outputs: [{kind: tensor, tensor: y}]\n",
            "distinct",
        ),
    ],
)
def test_spec_mistakes_are_named_at_load(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        Pipeline.load(_spec(tmp_path, text))
    assert message in str(caught.value)


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def test_rgb_image_resized_normalised_nchw(tmp_path):
    spec = """\
inputs:
  - {kind: image, name: img, tensor: x, color: RGB, size: [2, 3], resample: nearest,
     mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25], layout: NCHW, datatype: FP16}
outputs: [{kind: tensor, tensor: y}]
"""
    pipeline = Pipeline.load(_spec(tmp_path, spec))
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
    png = _encoded(pixels, "PNG")
    data_uri = b"data:image/png;base64," + base64.b64encode(png)
    items = np.empty(2, dtype=object)
    items[:] = [png, data_uri]
    out = pipeline.preprocess({"img": items})["x"]
    assert out.shape == (2, 3, 2, 3) and out.dtype == np.float16
    reference = np.asarray(
        Image.fromarray(pixels).resize((3, 2), Image.Resampling.NEAREST), np.float32
    )
    expected = ((reference / 255 - 0.5) / 0.25).transpose(2, 0, 1)
    np.testing.assert_allclose(out[0], expected, atol=1e-2)
    np.testing.assert_array_equal(out[0], out[1])


def test_jpeg_is_decoded_and_gif_refused(tmp_path):
    spec = "inputs: [{kind: image, tensor: x, color: L, layout: NHWC}]\noutputs: [{kind: tensor, tensor: y}]\n"
    pipeline = Pipeline.load(_spec(tmp_path, spec))
    gray = np.full((5, 5, 3), 200, np.uint8)
    items = np.empty(1, dtype=object)
    items[:] = [_encoded(gray, "JPEG")]
    out = pipeline.preprocess({"image": items})["x"]
    assert out.shape == (1, 5, 5, 1)
    np.testing.assert_allclose(out, 200 / 255, atol=0.02)
    items[:] = [_encoded(gray, "GIF")]
    with pytest.raises(InvalidRequest, match="input 'image' element 0"):
        pipeline.preprocess({"image": items})


def test_oversized_image_is_refused_before_decoding(tmp_path):
    spec = "inputs: [{kind: image, tensor: x, max_pixels: 100}]\noutputs: [{kind: tensor, tensor: y}]\n"
    pipeline = Pipeline.load(_spec(tmp_path, spec))
    items = np.empty(1, dtype=object)
    items[:] = [_encoded(np.zeros((20, 20, 3), np.uint8), "PNG")]
    with pytest.raises(InvalidRequest, match="input 'image' element 0: 20x20 is over 100 pixels"):
        pipeline.preprocess({"image": items})
