"""Torch engine on a real exported model (torch.export program from `kbundle export`), on CPU here:
signature and Dim ranges, numerics against eager torch, FP16/BF16, and served through the real
predictor process with tritonclient over HTTP and gRPC. CUDA paths are marked gpu."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the torch extra is not installed")

from kbundle.errors import EngineLoadError, InvalidRequest  # noqa: E402
from kbundle.predictors.engine import load_engine  # noqa: E402
from kbundle.predictors.torch_engine import TorchEngine  # noqa: E402
from kbundle.samples import digits_split  # noqa: E402
from kbundle.samples_torch import build_torch_digits, digits_model  # noqa: E402
from kbundle.settings import ModelSettings  # noqa: E402


@pytest.fixture(scope="module")
def torch_digits() -> Path:
    """model.pt2 + model.onnx exported (and numerically checked) by `kbundle export`; cached."""
    return build_torch_digits()


@pytest.fixture(scope="module")
def pt2_only(torch_digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("pt2") / "digits"
    target.mkdir()
    shutil.copy(torch_digits / "model.pt2", target / "model.pt2")
    return target


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    _, test = digits_split()
    return test.images.reshape(len(test.images), -1).astype(np.float32), test.labels


def test_signature_comes_from_the_exported_program(pt2_only: Path) -> None:
    engine = TorchEngine.load(pt2_only / "model.pt2", ModelSettings(device="cpu"))
    assert [s.to_metadata() for s in engine.signature.inputs] == [
        {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    ]
    assert [s.to_metadata() for s in engine.signature.outputs] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ]
    assert engine.shape_ranges == {
        "input": ((1, 64), (4096, 64))
    }  # torch.export.Dim("batch", 1, 4096)
    assert engine.device.startswith("cpu (torch.export program")


def test_exported_program_matches_eager_and_is_accurate(pt2_only: Path, held_out) -> None:
    x, labels = held_out
    engine = TorchEngine.load(pt2_only / "model.pt2", ModelSettings(device="cpu"))
    label, probs = engine.run({"input": x}, ["label", "probabilities"])
    model = digits_model()
    with torch.inference_mode():
        want_label, want_probs = model(torch.from_numpy(x))
    np.testing.assert_allclose(probs, want_probs.numpy(), atol=1e-5)
    assert (label == want_label.numpy()).all()
    assert float((label == labels).mean()) > 0.9  # a trained model, not noise


def test_bf16_and_fp16_keep_the_signature_dtypes(pt2_only: Path, held_out) -> None:
    x, _ = held_out
    base = TorchEngine.load(pt2_only / "model.pt2", ModelSettings(device="cpu")).run(
        {"input": x[:64]}, ["probabilities"]
    )[0]
    for precision in ("bf16", "fp16"):
        engine = TorchEngine.load(
            pt2_only / "model.pt2", ModelSettings(device="cpu", precision=precision)
        )
        probs = engine.run({"input": x[:64]}, ["probabilities"])[0]
        assert probs.dtype == np.float32  # cast back: the signature says FP32
        assert {"bf16": "bfloat16", "fp16": "float16"}[precision] in engine.device
        assert np.abs(probs - base).max() < 0.05, precision  # reduced precision, same answers
        assert engine.compute_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def test_batch_outside_the_exported_dim_range_is_a_400(pt2_only: Path) -> None:
    engine = TorchEngine.load(pt2_only / "model.pt2", ModelSettings(device="cpu"))
    with pytest.raises(
        InvalidRequest,
        match="input 'input': dim 0 is 4097, outside the torch engine's range 1..4096",
    ):
        engine.check_shapes("digits", {"input": np.zeros((4097, 64), np.float32)})


def test_device_cuda_without_a_gpu_is_a_one_line_load_failure(pt2_only: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(
        EngineLoadError, match="device: cuda asked for, but torch .* sees no CUDA GPU"
    ) as info:
        load_engine(pt2_only, ModelSettings(device="cuda"))
    assert "\n" not in str(info.value)


def test_int8_is_refused_for_torch(pt2_only: Path) -> None:
    with pytest.raises(EngineLoadError, match="int8 is a TensorRT build option"):
        TorchEngine.load(pt2_only / "model.pt2", ModelSettings(device="cpu", precision="int8"))


def test_truncated_pt2_is_a_load_error_not_a_crash(tmp_path: Path, torch_digits: Path) -> None:
    (tmp_path / "model.pt2").write_bytes((torch_digits / "model.pt2").read_bytes()[:2000])
    with pytest.raises(EngineLoadError, match="torch cannot load"):
        TorchEngine.load(tmp_path / "model.pt2", ModelSettings(device="cpu"))


@pytest.fixture(scope="module")
def torch_server(pt2_only: Path, tmp_path_factory: pytest.TempPathFactory):
    from procs import start_module

    log = tmp_path_factory.mktemp("torch-server") / "server.log"
    server = start_module(
        "kbundle.predictors",
        ["--model_name", "digits", "--model_dir", str(pt2_only), "--device", "cpu"],
        log,
        "/v2/models/digits/ready",
        timeout=120,
    )
    yield server
    server.stop()


def test_torch_engine_served_over_http_and_grpc(torch_server, held_out) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x, labels = held_out
    batch = x[:16]
    http = httpclient.InferenceServerClient(torch_server.http_url)
    meta = http.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    inp = httpclient.InferInput("input", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch, binary_data=True)
    result = http.infer("digits", [inp])
    assert (result.as_numpy("label") == labels[:16]).mean() > 0.8
    assert "torch engine" in torch_server.log() and "torch.export program" in torch_server.log()

    grpc = grpcclient.InferenceServerClient(torch_server.grpc_url)
    ginp = grpcclient.InferInput("input", list(batch.shape), "FP32")
    ginp.set_data_from_numpy(batch)
    gresult = grpc.infer(
        "digits", [ginp], outputs=[grpcclient.InferRequestedOutput("probabilities")]
    )
    np.testing.assert_allclose(
        gresult.as_numpy("probabilities"), result.as_numpy("probabilities"), atol=1e-6
    )


def test_served_request_outside_the_dim_range_is_400_and_invalid_argument(torch_server) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    big = np.zeros((4097, 64), np.float32)
    inp = httpclient.InferInput("input", list(big.shape), "FP32")
    inp.set_data_from_numpy(big, binary_data=True)
    with pytest.raises(InferenceServerException) as info:
        httpclient.InferenceServerClient(torch_server.http_url).infer("digits", [inp])
    assert (
        info.value.status() == "400"
        and "outside the torch engine's range 1..4096" in info.value.message()
    )
    ginp = grpcclient.InferInput("input", list(big.shape), "FP32")
    ginp.set_data_from_numpy(big)
    with pytest.raises(InferenceServerException) as ginfo:
        grpcclient.InferenceServerClient(torch_server.grpc_url).infer("digits", [ginp])
    assert (
        ginfo.value.status() == "StatusCode.INVALID_ARGUMENT"
        and "dim 0 is 4097" in ginfo.value.message()
    )


@pytest.mark.slow
def test_aoti_package_compiles_loads_and_matches_eager(
    tmp_path: Path, held_out, request: pytest.FixtureRequest
) -> None:
    """AOTInductor compiles C++ (about 1-2 minutes on 2 cores): runs only when `-m slow` selects it."""
    markexpr = request.config.option.markexpr or ""
    if "slow" not in markexpr or "not slow" in markexpr:
        pytest.skip("AOTInductor C++ compile takes 1-2 minutes on 2 cores: run with -m slow")
    from kbundle.predictors.torch_export import save_aoti
    from kbundle.samples_torch import INPUTS, OUTPUTS

    model = digits_model()
    result = save_aoti(model, INPUTS, OUTPUTS, tmp_path / "model.pt2", device="cpu")
    assert result.max_abs_diff < 1e-4
    engine = TorchEngine.load(tmp_path / "model.pt2", ModelSettings(device="cpu"))
    assert engine.device.startswith("cpu (AOTInductor package")
    assert engine.signature.inputs[0].shape == (-1, 64) and engine.shape_ranges["input"] == (
        (1, 64),
        (4096, 64),
    )
    x, _ = held_out
    with torch.inference_mode():
        want = model(torch.from_numpy(x[:7]))[1].numpy()
    np.testing.assert_allclose(engine.run({"input": x[:7]}, ["probabilities"])[0], want, atol=1e-5)


@pytest.mark.gpu
def test_torch_engine_on_cuda_with_graphs_and_fp16(
    pt2_only: Path, held_out, tmp_path: Path
) -> None:
    if not torch.cuda.is_available():
        pytest.skip(
            f"needs a CUDA GPU; torch {torch.__version__} sees none (CUDA build: {torch.version.cuda})"
        )
    import tritonclient.http as httpclient
    from procs import start_module

    server = start_module(
        "kbundle.predictors",
        [
            "--model_name",
            "digits",
            "--model_dir",
            str(pt2_only),
            "--device",
            "cuda",
            "--precision",
            "fp16",
            "--cuda_graphs",
            "true",
            "--batch_buckets",
            "1,8,32",
        ],
        tmp_path / "server.log",
        "/v2/models/digits/ready",
        timeout=300,
    )
    try:
        x, labels = held_out
        client = httpclient.InferenceServerClient(server.http_url)
        for rows in (1, 5, 32, 40):  # inside buckets (padded), exactly a bucket, above the largest
            inp = httpclient.InferInput("input", [rows, 64], "FP32")
            inp.set_data_from_numpy(x[:rows])
            label = client.infer("digits", [inp]).as_numpy("label")
            assert label.shape == (rows,) and (label == labels[:rows]).mean() > 0.7
        assert "captured CUDA graphs for batch buckets [1, 8, 32]" in server.log()
    finally:
        server.stop()


def test_cuda_graph_capture_failure_is_a_one_line_load_error(
    pt2_only: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No GPU here: capture itself is replaced by one that fails as a capture does (a sync op in
    the model); what is checked is that load turns it into one line, not a traceback."""
    from kbundle.predictors.predictor import EnginePredictor

    def failing_capture(self, buckets):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing\nstack...")

    monkeypatch.setattr(TorchEngine, "capture_graphs", failing_capture)
    settings = ModelSettings(device="cpu", cuda_graphs=True, warmup=False)
    with pytest.raises(
        EngineLoadError, match="CUDA graph capture for .* failed: RuntimeError: CUDA"
    ):
        TorchEngine.load(pt2_only / "model.pt2", settings)
    predictor = EnginePredictor("digits", pt2_only, settings)
    assert predictor.load() is False
    assert "\n" not in predictor.load_error
    assert predictor.load_error.endswith("(set cuda_graphs: false to run it eagerly)")


def test_save_aoti_off_cpu_runs_its_check_there_and_leaves_the_model_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`meta` stands in for `cuda` (no GPU here, and no C++ compile wanted): the AOTI compile is
    replaced by a stub; checked is that the package is verified on its own device and that the
    caller's model is not moved there."""
    from kbundle.predictors import torch_export
    from kbundle.samples_torch import INPUTS, OUTPUTS

    checked = []

    def fake_compile(program, *, package_path, inductor_configs):
        Path(package_path).write_bytes(b"package")

    def fake_check(path, model, specs, names, atol, rtol, device="cpu"):
        checked.append((device, next(model.parameters()).device.type))
        return 0.0

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fake_compile)
    monkeypatch.setattr(torch_export, "check_pt2", fake_check)
    model = digits_model()
    result = torch_export.save_aoti(model, INPUTS, OUTPUTS, tmp_path / "model.pt2", device="meta")
    assert checked == [("meta", "cpu")] and result.max_abs_diff == 0.0
    assert {p.device.type for p in model.parameters()} == {"cpu"}  # not moved in place


@pytest.mark.gpu
def test_aoti_package_for_cuda_is_checked_on_cuda(tmp_path: Path, held_out) -> None:
    if not torch.cuda.is_available():
        pytest.skip(f"needs a CUDA GPU; torch {torch.__version__} sees none")
    from kbundle.predictors.torch_export import save_aoti
    from kbundle.samples_torch import INPUTS, OUTPUTS

    model = digits_model()
    result = save_aoti(model, INPUTS, OUTPUTS, tmp_path / "model.pt2", device="cuda")
    assert result.max_abs_diff < 1e-4  # a number: the package ran on CUDA against eager CPU
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    engine = TorchEngine.load(tmp_path / "model.pt2", ModelSettings(device="cuda"))
    x, _ = held_out
    with torch.inference_mode():
        want = model(torch.from_numpy(x[:7]))[1].numpy()
    np.testing.assert_allclose(engine.run({"input": x[:7]}, ["probabilities"])[0], want, atol=1e-4)
