"""Settings precedence: CLI flag > env > model config (kbundle.yaml) > default."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

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
    assert resolve_settings({"profile_batch": [1, 4, 8]}, {}, {}).profile_batch == (1, 4, 8)


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


def test_unknown_config_key_is_an_error_naming_the_closest_setting():
    with pytest.raises(ConfigError) as err:
        resolve_settings({"max_batch_sise": 4, "max_batch_delay_ms": 2}, {}, {})
    assert "kbundle.yaml: unknown setting 'max_batch_sise' (did you mean 'max_batch_size'?)" in str(
        err.value
    )
    with pytest.raises(ConfigError, match="unknown setting 'labels'"):  # gone: nothing read it
        resolve_settings({"labels": [0, 1]}, {}, {})
    with pytest.raises(ConfigError, match=r"unknown setting 'zzz';"):  # nothing close: no guess
        resolve_settings({"zzz": 1}, {}, {})


def test_keys_of_other_readers_are_not_settings_but_allowed():
    assert resolve_settings({"build_engine": "tensorrt"}, {}, {}) == ModelSettings()


def test_unknown_env_var_warns_with_the_suggestion(caplog):
    env = {"KBUNDLE_MAX_BATCH_SISE": "4", "KBUNDLE_CACHE": "/x", "KBUNDLE_STORAGE_RETRIES": "2"}
    with caplog.at_level(logging.WARNING, logger="kbundle.settings"):
        settings = resolve_settings({}, {}, env)
    assert settings.max_batch_size == ModelSettings().max_batch_size
    [record] = caplog.records
    assert "'KBUNDLE_MAX_BATCH_SISE' (did you mean 'KBUNDLE_MAX_BATCH_SIZE'?)" in record.message


def test_predictor_refuses_to_start_on_a_typo_with_one_line(tmp_path):
    (tmp_path / "kbundle.yaml").write_text("max_batch_sise: 4\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBUNDLE_")}
    result = subprocess.run(
        [sys.executable, "-m", "kbundle.predictors", "--model_name", "m"]
        + ["--model_dir", str(tmp_path), "--http_port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "'max_batch_sise' (did you mean 'max_batch_size'?)" in errors[0]


def test_hostile_model_config_is_one_config_error(tmp_path):
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n'
    bomb += "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    (tmp_path / "kbundle.yaml").write_text(bomb)
    with pytest.raises(ConfigError, match="kbundle.yaml:.*alias bomb"):
        read_model_config(tmp_path)
