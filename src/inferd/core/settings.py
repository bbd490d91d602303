"""Server settings: one validated object, built once by the CLI and passed down.

Precedence, strongest first: command-line flags, ``INFERD_*`` environment variables, the YAML config
file, defaults. The core never reads ``os.environ``; :func:`load_settings` is handed the environment.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from inferd.core.errors import ConfigError, validation_problems
from inferd.core.json_limits import DEFAULT_MAX_DEPTH, MAX_MAX_DEPTH

ENV_PREFIX = "INFERD_"
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"
    CRITICAL = "critical"


def parse_rate(text: str) -> float:
    """``"100/s"`` or ``"600/m"`` → tokens per second."""
    match = _RATE.match(text)
    if not match:
        raise ValueError(f"rate limit {text!r} must look like '100/s' or '600/m'")
    amount = float(match.group(1))
    if amount <= 0:
        raise ValueError(f"rate limit {text!r} must be positive")
    per_second = amount if match.group(2).startswith("s") else amount / 60.0
    return per_second


def parse_duration(value: str | float | int) -> float:
    """Seconds from ``30``, ``"30s"``, ``"15m"``, ``"7d"``."""
    # ValueError for anything else (an empty YAML value is None): pydantic turns only ValueError into a
    # validation error naming the field; a TypeError would escape load_settings as a crash.
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"duration {value!r} must be a non-negative number of seconds")
        return seconds
    if not isinstance(value, str):
        raise ValueError(f"duration {value!r} must be a number of seconds or like '30s', '15m', '7d'")
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"duration {value!r} must be a number of seconds or like '30s', '15m', '7d'")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_devices(text: str) -> dict[str, int]:
    """``"cpu=4,gpu=1"`` → ``{"cpu": 4, "gpu": 1}`` (threads per device)."""
    devices: dict[str, int] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, threads = part.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or not threads.strip().isdigit():
            raise ValueError(f"device entry {part!r} must look like 'cpu=4' (device name = thread count)")
        if int(threads) < 1:
            raise ValueError(f"device entry {part!r} needs at least one thread")
        devices[name] = int(threads)
    if not devices:
        raise ValueError("at least one device must be configured, e.g. 'cpu=4,gpu=1'")
    return devices


class TenantSettings(BaseModel):
    """One entry of the config file's ``tenants:`` section."""

    model_config = ConfigDict(extra="forbid")

    rate_limit: str | None = None
    burst: int | None = None
    weight: float = Field(default=1.0, gt=0)  # share of each model version's capacity when contended
    max_concurrency: int | None = Field(default=None, ge=1)  # requests executing at once, per device

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() not in ("off", "none", "unlimited"):
            parse_rate(value)
        return value


class Settings(BaseModel):
    """Everything configurable. Field ``foo_bar`` is ``INFERD_FOO_BAR`` and ``foo_bar:`` in the YAML file."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    models: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # Server processes answering on host:port; "auto" is the number of cores.
    workers: int = Field(default=1, ge=1)
    dev: bool = False
    devices: str = "cpu=4,gpu=1"
    queue_limit: int = Field(default=64, ge=1)
    # How long a thread holding the GIL keeps it while another thread waits (sys.setswitchinterval).
    gil_switch_interval_ms: float = Field(default=1.0, gt=0, le=100)
    api_keys: str = ""
    rate_limit: str | None = None
    rate_burst: int | None = Field(default=None, ge=1)
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    # redis://[:password@]host:port/db: tenant rate limits shared by every process and replica.
    redis_url: str | None = None
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    max_batch_inputs: int = Field(default=1024, ge=1)
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    max_connections: int = Field(default=512, ge=1)
    keepalive_timeout_s: float = Field(default=5.0, gt=0)
    keepalive_max_requests: int = Field(default=1000, ge=1)
    max_json_depth: int = Field(default=DEFAULT_MAX_DEPTH, ge=2, le=MAX_MAX_DEPTH)
    strict_readiness: bool = False
    unknown_model_labels: int = Field(default=100, ge=0)
    access_log: str = "-"
    log_level: LogLevel = LogLevel.INFO
    # OpenTelemetry (pip install 'inferd[otel]'); unset: on when the OTEL_* variables name an OTLP endpoint.
    tracing: bool = False
    # jobs
    store: str = "sqlite:///.inferd/inferd.db"
    worker: bool = True
    worker_concurrency: int = Field(default=4, ge=1)
    job_lease_s: float = Field(default=30.0, gt=0)
    job_ttl: float = 7 * 86400.0
    job_max_attempts: int = Field(default=3, ge=1)
    job_retry_base_s: float = Field(default=1.0, ge=0)
    job_max_result_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    janitor_interval_s: float = Field(default=60.0, gt=0)
    worker_poll_s: float = Field(default=1.0, gt=0)
    shutdown_grace_s: float = Field(default=20.0, ge=0)
    metrics_port: int | None = None
    # V2 gRPC (inference.GRPCInferenceService) beside HTTP, in the same process; grpc=false turns it off.
    grpc: bool = True
    grpc_port: int = Field(default=8001, ge=0, le=65535)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, value: str) -> str:
        parse_devices(value)
        return value

    @field_validator("rate_limit")
    @classmethod
    def _check_rate(cls, value: str | None) -> str | None:
        if value is not None and value.strip().lower() not in ("", "off", "none"):
            parse_rate(value)
            return value
        return None

    @field_validator("workers", mode="before")
    @classmethod
    def _check_workers(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            # The cores this process may run on (a container's CPU set), not every core of the host.
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return value

    @field_validator("job_ttl", mode="before")
    @classmethod
    def _check_ttl(cls, value: Any) -> float:
        return parse_duration(value)

    @property
    def device_threads(self) -> dict[str, int]:
        return parse_devices(self.devices)


def setting_source(name: str) -> str:
    """How an operator sets ``name``, for a message that names the setting behind a limit."""
    assert name in Settings.model_fields, name
    return f"the server setting {name} ({ENV_PREFIX}{name.upper()}, or {name}: in the config file)"


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    known = set(Settings.model_fields)
    values: dict[str, Any] = {}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        field = key[len(ENV_PREFIX) :].lower()
        if field in known and field != "tenants":
            values[field] = value
    return values


def otel_requested(environ: Mapping[str, str]) -> bool:
    """The standard OpenTelemetry variables ask for traces: an OTLP endpoint, SDK not disabled, exporter
    not ``none``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def load_settings(
    *,
    flags: Mapping[str, Any] | None = None,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge defaults < YAML file < environment < flags and validate; raise ConfigError saying what to fix."""
    merged: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read it ({exc.strerror})") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path}: must be a mapping of setting names to values")
        merged.update(data)
    merged.update(_env_values(environ or {}))
    merged.update({key: value for key, value in (flags or {}).items() if value is not None})
    merged.setdefault("tracing", otel_requested(environ or {}))
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {validation_problems(exc, whole='settings')}") from exc
