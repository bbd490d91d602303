"""Settings: precedence (flags > INFERD_* env > YAML file > defaults), validation, value parsers."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferd.core.errors import ConfigError
from inferd.core.settings import Settings, load_settings, parse_devices, parse_duration, parse_rate


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inferd.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.port == 8000
    assert settings.queue_limit == 64
    assert settings.device_threads == {"cpu": 4, "gpu": 1}
    assert settings.rate_limit is None
    assert settings.job_ttl == 7 * 86400


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = config(tmp_path, "port: 9001\nqueue_limit: 11\nmax_batch_inputs: 12\nhost: 0.0.0.0\n")
    environ = {"INFERD_PORT": "9002", "INFERD_QUEUE_LIMIT": "21", "OTHER": "x"}
    settings = load_settings(flags={"port": 9003, "host": None}, config_file=path, environ=environ)
    assert settings.port == 9003  # flag beats env and file
    assert settings.queue_limit == 21  # env beats file
    assert settings.max_batch_inputs == 12  # file beats default
    assert settings.host == "0.0.0.0"  # a flag left unset (None) does not override
    assert settings.max_body_bytes == 1024 * 1024  # default


def test_env_only_reads_the_prefix_and_converts_types(tmp_path: Path) -> None:
    settings = load_settings(
        environ={"INFERD_DEV": "true", "INFERD_MODELS": str(tmp_path), "PORT": "1", "inferd_port": "2"}
    )
    assert settings.dev is True
    assert settings.models == tmp_path
    assert settings.port == 8000


def test_nested_tenant_settings_from_the_file(tmp_path: Path) -> None:
    path = config(
        tmp_path, "tenants:\n  acme: {rate_limit: 10/s, burst: 20, weight: 3, max_concurrency: 8}\n  b: {}\n"
    )
    settings = load_settings(config_file=path)
    assert settings.tenants["acme"].rate_limit == "10/s"
    assert settings.tenants["acme"].burst == 20
    assert (settings.tenants["acme"].weight, settings.tenants["acme"].max_concurrency) == (3.0, 8)
    assert (settings.tenants["b"].weight, settings.tenants["b"].max_concurrency) == (1.0, None)
    with pytest.raises(ConfigError, match="weight"):
        load_settings(config_file=config(tmp_path, "tenants:\n  acme: {weight: 0}\n"))


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        ({"port": 70000}, "port"),
        ({"port": "eighty"}, "port"),
        ({"queue_limit": 0}, "queue_limit"),
        ({"devices": "cpu"}, "devices"),
        ({"devices": "cpu=0"}, "devices"),
        ({"devices": ""}, "devices"),
        ({"rate_limit": "fast"}, "rate_limit"),
        ({"rate_limit": "0/s"}, "rate_limit"),
        ({"job_ttl": "a week"}, "job_ttl"),
        ({"job_ttl": -5}, "job_ttl"),
        ({"job_ttl": [1]}, "job_ttl"),
        ({"unknown_model_labels": -1}, "unknown_model_labels"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_invalid_values_name_the_field(flags: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(flags=flags)
    assert field in info.value.message
    assert info.value.code == "config_error"


def test_invalid_env_value_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(environ={"INFERD_WORKER_CONCURRENCY": "0"})
    assert "worker_concurrency" in info.value.message


def test_invalid_file_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as typo:
        load_settings(config_file=config(tmp_path, "queue_limt: 5\n"))
    assert "queue_limt" in typo.value.message
    with pytest.raises(ConfigError) as tenant:
        load_settings(config_file=config(tmp_path, "tenants:\n  acme: {rate_limit: lots}\n"))
    assert "tenants.acme.rate_limit: rate limit 'lots' must look like" in tenant.value.message


def test_empty_yaml_value_is_a_config_error_not_a_crash(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=config(tmp_path, "job_ttl:\n"))
    assert "job_ttl" in info.value.message


def test_config_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as unreadable:
        load_settings(config_file=missing)
    assert str(missing) in unreadable.value.message
    with pytest.raises(ConfigError) as bad_yaml:
        load_settings(config_file=config(tmp_path, "port: [8000\n"))
    assert "YAML" in bad_yaml.value.message
    with pytest.raises(ConfigError) as not_mapping:
        load_settings(config_file=config(tmp_path, "- port\n"))
    assert "mapping" in not_mapping.value.message
    assert load_settings(config_file=config(tmp_path, "")).port == 8000  # an empty file is fine


def test_rate_limit_can_be_switched_off() -> None:
    assert load_settings(flags={"rate_limit": "off"}).rate_limit is None
    assert load_settings(environ={"INFERD_RATE_LIMIT": "none"}).rate_limit is None
    assert load_settings(environ={"INFERD_RATE_LIMIT": "50/s"}).rate_limit == "50/s"


def test_assignment_is_validated() -> None:
    settings = Settings()
    with pytest.raises(ValueError):
        settings.port = -1


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("100/s", 100.0),
        ("600/m", 10.0),
        ("5 / sec", 5.0),
        ("120/min", 2.0),
        ("1.5/second", 1.5),
        ("60/minute", 1.0),
    ],
)
def test_parse_rate(text: str, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize("text", ["", "100", "100/h", "/s", "-1/s", "0/s", "ten/s", "100/s/s"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("7d", 604800.0),
        ("15m", 900.0),
        ("30s", 30.0),
        ("2h", 7200.0),
        ("250ms", 0.25),
        ("45", 45.0),
        (30, 30.0),
        (1.5, 1.5),
    ],
)
def test_parse_duration(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["7 days", "d", "-1s", "", "1w", None, [1], True, -3, float("nan")])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_parse_devices() -> None:
    assert parse_devices("cpu=4,gpu=1") == {"cpu": 4, "gpu": 1}
    assert parse_devices(" cpu = 2 , ") == {"cpu": 2}
    assert parse_devices("cpu=1,gpu_2=3") == {"cpu": 1, "gpu_2": 3}


@pytest.mark.parametrize("text", ["", "cpu", "cpu=", "cpu=0", "cpu=-1", "CPU=1", "cpu=two", "=2", "1cpu=2"])
def test_parse_devices_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_devices(text)
