"""Engine build cache: keys, reuse, rebuild on another GPU, corrupt entries rebuilt, CLI refusal.

The TensorRT build itself needs a GPU; here the cache is driven with an injected build function
that writes a stand-in plan (this file says so: the real build is covered by the gpu tests).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kbundle.errors import EngineLoadError
from kbundle.predictors import engine_builder
from kbundle.predictors.engine_builder import BuildSpec, EngineCache, Target, cache_key, ensure_plan
from kbundle.predictors.tensorrt_build import profile_shapes
from kbundle.settings import ModelSettings

H100 = Target("NVIDIA H100 80GB HBM3", "9.0", "10.3.0")
A10 = Target("NVIDIA A10", "8.6", "10.3.0")


class FakeBuild:
    """Stand-in for tensorrt_build.build_plan: records calls, writes bytes naming the spec and target."""

    def __init__(self, target: Target):
        self.target = target
        self.calls: list[BuildSpec] = []

    def __call__(self, spec: BuildSpec, out: Path) -> None:
        self.calls.append(spec)
        out.write_bytes(
            f"plan for sm{self.target.compute_capability} {spec.precision} {spec.profile_batch}".encode()
        )


@pytest.fixture()
def model_dir(tmp_path: Path, digits_v1: Path) -> Path:
    target = tmp_path / "model"
    target.mkdir()
    shutil.copy(digits_v1 / "model.onnx", target / "model.onnx")
    return target


def spec_for(model_dir: Path, **settings) -> BuildSpec:
    return engine_builder.build_spec(model_dir, ModelSettings(**settings))


def test_cache_key_changes_with_everything_that_makes_a_plan_non_portable(model_dir: Path) -> None:
    base = spec_for(model_dir)
    key = cache_key(base, H100)
    assert key == cache_key(spec_for(model_dir), H100)  # stable
    assert key.startswith("sm90-trt10.3.0-fp32-")
    others = {
        "gpu": cache_key(base, A10),
        "tensorrt": cache_key(base, Target(H100.gpu_name, "9.0", "10.4.0")),
        "precision": cache_key(spec_for(model_dir, fp16=True), H100),
        "profile": cache_key(spec_for(model_dir, profile_batch=(1, 16, 64)), H100),
        "seq": cache_key(spec_for(model_dir, profile_seq=(1, 64, 128)), H100),
    }
    assert len({key, *others.values()}) == 6, others
    (model_dir / "model.onnx").write_bytes((model_dir / "model.onnx").read_bytes() + b"\0")
    assert cache_key(spec_for(model_dir), H100) != key  # new ONNX bytes, new key


def test_plan_is_built_once_then_reused(model_dir: Path) -> None:
    build = FakeBuild(H100)
    plan = ensure_plan(model_dir, ModelSettings(), H100, build)
    again = ensure_plan(model_dir, ModelSettings(), H100, build)
    assert len(build.calls) == 1
    assert plan == again == model_dir / "model.plan"
    assert plan.read_bytes() == b"plan for sm9.0 fp32 (1, 8, 32)"
    meta = json.loads((model_dir / "model.plan.json").read_text())
    assert meta["compute_capability"] == "9.0" and meta["tensorrt_version"] == "10.3.0"
    assert meta["precision"] == "fp32" and meta["profile_batch"] == [1, 8, 32]


def test_another_gpu_gets_its_own_build_and_both_stay_cached(model_dir: Path) -> None:
    on_h100, on_a10 = FakeBuild(H100), FakeBuild(A10)
    ensure_plan(model_dir, ModelSettings(), H100, on_h100)
    ensure_plan(model_dir, ModelSettings(), A10, on_a10)
    assert (model_dir / "model.plan").read_bytes().startswith(b"plan for sm8.6")
    ensure_plan(model_dir, ModelSettings(), H100, on_h100)  # back on the first GPU: cached
    assert len(on_h100.calls) == 1 and len(on_a10.calls) == 1
    assert (model_dir / "model.plan").read_bytes().startswith(b"plan for sm9.0")
    assert len(list((model_dir / ".kbundle-engines").iterdir())) == 2


def test_corrupt_cache_entry_is_rebuilt_not_served(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build = FakeBuild(H100)
    ensure_plan(model_dir, ModelSettings(), H100, build)
    key = cache_key(spec_for(model_dir), H100)
    cached = model_dir / ".kbundle-engines" / key / "model.plan"
    cached.unlink()  # break the hard link first, then corrupt the cache's copy only
    cached.write_bytes(b"truncated garbage")
    with caplog.at_level(logging.WARNING, "kbundle.engine_builder"):
        plan = ensure_plan(model_dir, ModelSettings(), H100, build)
    assert len(build.calls) == 2
    assert plan.read_bytes() == b"plan for sm9.0 fp32 (1, 8, 32)"
    assert "corrupt (digest mismatch)" in caplog.text


def test_entry_with_unreadable_metadata_is_dropped(tmp_path: Path) -> None:
    entry = tmp_path / "k1"
    entry.mkdir()
    (entry / "model.plan").write_bytes(b"x")
    (entry / "model.plan.json").write_text("{not json")
    assert EngineCache(tmp_path).lookup("k1") is None
    assert not entry.exists()


def test_failed_build_leaves_no_entry(model_dir: Path) -> None:
    def failing(spec: BuildSpec, out: Path) -> None:
        out.write_bytes(b"half")
        raise EngineLoadError("TensorRT failed to build")

    with pytest.raises(EngineLoadError):
        ensure_plan(model_dir, ModelSettings(), H100, failing)
    assert list((model_dir / ".kbundle-engines").iterdir()) == []
    assert not (model_dir / "model.plan").exists()


def test_engine_cache_dir_setting_moves_the_cache(model_dir: Path, tmp_path: Path) -> None:
    ensure_plan(
        model_dir, ModelSettings(engine_cache_dir=str(tmp_path / "shared")), H100, FakeBuild(H100)
    )
    assert len(list((tmp_path / "shared").iterdir())) == 1
    assert not (model_dir / ".kbundle-engines").exists()


def test_int8_needs_a_calibration_set_and_keys_on_it(model_dir: Path) -> None:
    with pytest.raises(EngineLoadError, match="calibration.npz"):
        spec_for(model_dir, precision="int8")
    np.savez(model_dir / "calibration.npz", input=np.ones((16, 64), np.float32))
    first = cache_key(spec_for(model_dir, precision="int8"), H100)
    np.savez(model_dir / "calibration.npz", input=np.zeros((16, 64), np.float32))
    assert cache_key(spec_for(model_dir, precision="int8"), H100) != first


def test_profile_shapes_fill_batch_and_sequence_dims() -> None:
    spec = BuildSpec(Path("m.onnx"), "fp16", (1, 8, 32), (16, 128, 512))
    assert profile_shapes("ids", (-1, -1), spec) == ((1, 16), (8, 128), (32, 512))
    assert profile_shapes("x", (-1, 64), spec) == ((1, 64), (8, 64), (32, 64))
    with pytest.raises(EngineLoadError, match="input 'ids' dim 1 is dynamic: set profile_seq"):
        profile_shapes("ids", (-1, -1), BuildSpec(Path("m.onnx"), "fp16", (1, 8, 32), ()))


def test_build_engine_returns_none_with_one_line_where_it_cannot_build(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, "kbundle.engine_builder"):
        assert engine_builder.build_engine(model_dir, ModelSettings(device="cpu")) is None
        assert engine_builder.build_engine(model_dir / "absent", ModelSettings()) is None
    assert "engine build skipped" in caplog.text and "no model.onnx" in caplog.text
    try:
        engine_builder.detect_target()
    except EngineLoadError:
        caplog.clear()
        with caplog.at_level(logging.INFO, "kbundle.engine_builder"):
            assert engine_builder.build_engine(model_dir, ModelSettings()) is None
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and lines[0].startswith("no TensorRT engine built: ")


def test_build_command_fails_in_one_line_without_gpu(model_dir: Path) -> None:
    try:
        engine_builder.detect_target()
        pytest.skip("a GPU with TensorRT is present: the refusal path is not reachable here")
    except EngineLoadError:
        pass
    proc = subprocess.run(
        [sys.executable, "-m", "kbundle.cli", "build", str(model_dir), "--fp16", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot build a TensorRT engine: "), (
        proc.stderr
    )
    assert not (model_dir / "model.plan").exists()


def test_empty_profile_batch_follows_max_batch_size(model_dir: Path) -> None:
    assert spec_for(model_dir, profile_batch=(), max_batch_size=64).profile_batch == (1, 8, 64)
    assert spec_for(model_dir, profile_batch=(), max_batch_size=4).profile_batch == (1, 4, 4)


# -- tensorrt_build.build_plan's own code, against a stand-in TensorRT builder (fake_tensorrt.py) --
def _fake_builder(monkeypatch: pytest.MonkeyPatch, inputs, dtypes=None, version="10.99.0-fake"):
    from fake_tensorrt import FakeBuilderState, FakeCudart, add_builder, fake_trt_module

    from kbundle.predictors import cuda_device

    cudart = FakeCudart()
    state = FakeBuilderState(inputs, cudart, dtypes)
    trt = add_builder(fake_trt_module(None), state)
    trt.__version__ = version
    monkeypatch.setattr(cuda_device, "_cudart", lambda: cudart)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    return state


@pytest.fixture()
def fake_builder(monkeypatch: pytest.MonkeyPatch):
    return _fake_builder(monkeypatch, {"input": (-1, 64)})


def test_build_plan_sets_profile_and_fp16(fake_builder, model_dir: Path, tmp_path: Path) -> None:
    """Stand-in TensorRT: checks the calls kbundle makes (profile, flags), not TensorRT's build."""
    from kbundle.predictors.tensorrt_build import build_plan

    spec = spec_for(model_dir, fp16=True, profile_batch=(1, 4, 16))
    build_plan(spec, tmp_path / "model.plan")
    assert fake_builder.profile == {"input": ((1, 64), (4, 64), (16, 64))}
    assert fake_builder.flags == {"FP16"}
    assert (tmp_path / "model.plan").read_bytes().startswith(b"plan ['FP16']")


def _int8_build(model_dir: Path, tmp_path: Path, **settings) -> None:
    from kbundle.predictors.tensorrt_build import build_plan

    spec = spec_for(model_dir, precision="int8", **settings)
    build_plan(spec, tmp_path / "model.plan")


def test_int8_build_feeds_every_row_at_the_opt_shape(
    fake_builder, model_dir: Path, tmp_path: Path
) -> None:
    samples = np.arange(20 * 64, dtype=np.float32).reshape(20, 64)
    np.savez(model_dir / "calibration.npz", input=samples)
    _int8_build(model_dir, tmp_path, profile_batch=(1, 8, 32))
    assert fake_builder.flags == {"FP16", "INT8"}
    # TensorRT reads opt=8 rows per batch: 3 batches cover all 20 rows, the last wraps around
    assert fake_builder.calibration_rows == 24
    fed = np.concatenate([b["input"] for b in fake_builder.calibration_batches])
    np.testing.assert_array_equal(fed, samples[np.arange(24) % 20])
    assert fake_builder.cudart.allocations == {} and fake_builder.cudart.streams_open == 0


def test_int8_calibration_set_smaller_than_opt_is_repeated_not_read_past(
    fake_builder, model_dir: Path, tmp_path: Path
) -> None:
    samples = np.arange(5 * 64, dtype=np.float32).reshape(5, 64)
    np.savez(model_dir / "calibration.npz", input=samples)
    _int8_build(model_dir, tmp_path, profile_batch=(1, 8, 32))  # opt 8 > 5 rows
    (batch,) = fake_builder.calibration_batches
    np.testing.assert_array_equal(batch["input"], samples[[0, 1, 2, 3, 4, 0, 1, 2]])


def test_int8_calibration_keeps_each_inputs_dtype(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, tmp_path: Path
) -> None:
    state = _fake_builder(
        monkeypatch, {"ids": (-1, -1), "mask": (-1, -1)}, {"ids": "INT64", "mask": "HALF"}
    )
    ids = (np.int64(1) << 40) + np.arange(4 * 16, dtype=np.int64).reshape(
        4, 16
    )  # float32 would round
    mask = np.full((4, 16), 0.5, np.float16)
    np.savez(model_dir / "calibration.npz", ids=ids, mask=mask)
    _int8_build(model_dir, tmp_path, profile_batch=(1, 4, 8), profile_seq=(1, 16, 32))
    (batch,) = state.calibration_batches
    assert batch["ids"].dtype == np.int64 and batch["mask"].dtype == np.float16
    np.testing.assert_array_equal(batch["ids"], ids)
    np.testing.assert_array_equal(batch["mask"], mask)


def test_int8_calibration_rows_must_have_the_opt_shape(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, tmp_path: Path
) -> None:
    _fake_builder(monkeypatch, {"ids": (-1, -1)}, {"ids": "INT64"})
    np.savez(model_dir / "calibration.npz", ids=np.zeros((4, 12), np.int64))
    with pytest.raises(
        EngineLoadError,
        match=r"'ids' has shape \[4, 12\]; TensorRT calibrates at "
        r"the profile's opt shape \[4, 16\]",
    ):
        _int8_build(model_dir, tmp_path, profile_batch=(1, 4, 8), profile_seq=(1, 16, 32))


def test_int8_calibration_set_must_name_every_input(
    fake_builder, model_dir: Path, tmp_path: Path
) -> None:
    from kbundle.predictors.tensorrt_build import build_plan

    np.savez(model_dir / "calibration.npz", pixels=np.zeros((8, 64), np.float32))
    with pytest.raises(
        EngineLoadError, match=r"calibration.npz lacks arrays for inputs \['input'\]"
    ):
        build_plan(spec_for(model_dir, precision="int8"), tmp_path / "model.plan")


def _build_cli(model_dir: Path, capsys: pytest.CaptureFixture, *flags: str) -> tuple[int, str]:
    from kbundle import cli

    code = cli.main(["build", str(model_dir), *flags])
    return code, capsys.readouterr().err


def test_build_on_tensorrt_11_fails_in_one_line_naming_the_pin(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    _fake_builder(monkeypatch, {"input": (-1, 64)}, version="11.4.0.106")
    code, err = _build_cli(model_dir, capsys, "--fp16", "true")
    assert code == 1 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert (
        line.startswith(
            "error: cannot build a TensorRT engine: TensorRT 11.4.0.106 is installed, but kbundle "
            "builds plans with the TensorRT 10 API"
        )
        and "tensorrt-cu12>=10.9,<11" in line
    )


def test_tensorrt_api_error_during_build_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    import types

    _fake_builder(monkeypatch, {"input": (-1, 64)})
    sys.modules["tensorrt"].BuilderFlag = types.SimpleNamespace()  # an API this TensorRT lacks
    code, err = _build_cli(model_dir, capsys, "--fp16", "true")
    assert code == 1 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "could not build" in line and "AttributeError" in line, err
    assert not (model_dir / "model.plan").exists()
