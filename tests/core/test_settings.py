"""Settings precedence: CLI flag > env > model config (kbundle.yaml) > default."""

from __future__ import annotations

import pytest

from kbundle.errors import ConfigError
from kbundle.settings import ModelSettings, read_model_config, resolve_settings


def test_default_when_nothing_given():
    assert resolve_settings({}, {}, {}) == ModelSettings()


def test_model_config_over_default_env_over_config_flag_over_env():
    config = {"max_batch_size": 8, "max_batch_delay_ms": 3, "device": "cpu"}
    env = {"KBUNDLE_MAX_BATCH_SIZE": "16", "KBUNDLE_DEVICE": "auto"}
    flags = {"max_batch_size": "4", "device": None}
    settings = resolve_settings(config, flags, env)
    assert settings.max_batch_size == 4  # flag
    assert settings.device == "auto"  # env over config (flag not given)
    assert settings.max_batch_delay_ms == 3.0  # config over default
    assert settings.instances == 1  # default


def test_lists_from_env_and_config():
    assert resolve_settings(
        {}, {}, {"KBUNDLE_EXECUTION_PROVIDERS": "cuda, cpu"}
    ).execution_providers == ("cuda", "cpu")
    assert resolve_settings({"labels": [0, 1]}, {}, {}).labels == ("0", "1")


@pytest.mark.parametrize(
    "config, message",
    [
        ({"max_batch_size": "many"}, "max_batch_size from kbundle.yaml"),
        ({"device": "tpu"}, "device: 'tpu' is not one of"),
        ({"warmup": "perhaps"}, "warmup from kbundle.yaml"),
        ({"instances": 0}, "instances must be >= 1"),
    ],
)
def test_bad_values_name_the_setting_and_source(config, message):
    with pytest.raises(ConfigError, match=message):
        resolve_settings(config, {}, {})


def test_env_error_names_the_variable():
    with pytest.raises(ConfigError, match="env KBUNDLE_INSTANCES"):
        resolve_settings({}, {}, {"KBUNDLE_INSTANCES": "two"})


def test_model_config_file_read_and_malformed(tmp_path):
    assert read_model_config(tmp_path) == {}
    (tmp_path / "kbundle.yaml").write_text("max_batch_size: 2\n# comment\n")
    assert read_model_config(tmp_path) == {"max_batch_size": 2}
    (tmp_path / "kbundle.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_model_config(tmp_path)
