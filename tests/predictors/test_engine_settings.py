"""GPU engine settings: precedence (flag > env > kbundle.yaml > default) and validation."""

from __future__ import annotations

import pytest

from kbundle.errors import ConfigError
from kbundle.settings import ModelSettings, effective_precision, resolve_settings


def test_precision_and_profiles_follow_the_documented_precedence() -> None:
    config = {
        "precision": "fp16",
        "profile_batch": [1, 4, 16],
        "device": "cuda",
        "cuda_graphs": True,
    }
    from_config = resolve_settings(config, env={})
    assert (
        from_config.precision,
        from_config.profile_batch,
        from_config.device,
        from_config.cuda_graphs,
    ) == ("fp16", (1, 4, 16), "cuda", True)
    env = {"KBUNDLE_PRECISION": "bf16", "KBUNDLE_PROFILE_BATCH": "2,8,64"}
    from_env = resolve_settings(config, env=env)
    assert (from_env.precision, from_env.profile_batch) == ("bf16", (2, 8, 64))
    from_flag = resolve_settings(
        config, flags={"precision": "fp32", "device": "cpu", "batch_buckets": "1,2"}, env=env
    )
    assert (from_flag.precision, from_flag.device, from_flag.batch_buckets) == (
        "fp32",
        "cpu",
        (1, 2),
    )


def test_effective_precision_reads_fp16_as_a_shorthand() -> None:
    assert effective_precision(ModelSettings()) == "fp32"
    assert effective_precision(ModelSettings(fp16=True)) == "fp16"
    assert effective_precision(ModelSettings(fp16=True, precision="int8")) == "int8"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"precision": "fp8"}, "precision: 'fp8' is not one of"),
        ({"profile_batch": "8,4,16"}, "profile_batch must be min,opt,max"),
        ({"profile_seq": "1,2"}, "profile_seq must be min,opt,max"),
        ({"batch_buckets": "0,8"}, "batch_buckets must be positive"),
        ({"profile_batch": "a,b,c"}, "profile_batch from kbundle.yaml: cannot read"),
        ({"device": "gpu"}, "device: 'gpu' is not one of"),
    ],
)
def test_bad_engine_settings_are_refused_at_startup(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_settings(config, env={})
