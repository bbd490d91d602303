"""``model.yaml``: what one model version is and how it runs."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from inferd.core.errors import ConfigError, validation_problems
from inferd.core.executor import LanePolicy
from inferd.core.tensors import TensorSpec

# A registered runtime name (entry-point group ``inferd.runtimes``) or ``package.module:Class``.
RUNTIME_REF = re.compile(r"[A-Za-z_][\w-]*|[A-Za-z_][\w.]*:[A-Za-z_]\w*")
HOOKS = ("preprocessor", "validator", "postprocessor")


class Isolation(StrEnum):
    """Where a version's model call runs (``isolation:`` in model.yaml; README, "Timeouts")."""

    THREAD = "thread"  # on the executor's threads, in the server process: cannot be stopped
    PROCESS = "process"  # in child processes, one per executor slot: stopped and replaced past a deadline


class ModelSpec(BaseModel):
    """inferd's own keys. Any other key belongs to the runtime, which validates it when the version
    loads (``model_extra``); unknown ones are reported there."""

    model_config = ConfigDict(extra="allow")

    runtime: str
    device: str = "cpu"
    timeout_s: float = Field(default=5.0, gt=0)
    max_batch_size: int = Field(default=1, ge=1)
    input_schema: dict[str, Any] | None = None
    # V2 tensor declarations; when absent, the runtime's own (if it can tell them) are used.
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    preprocessor: str | None = None
    validator: str | None = None
    postprocessor: str | None = None
    load_at_start: bool = True
    # Scheduling on the device (README, "Scheduling under load").
    weight: float = Field(default=1.0, gt=0)
    max_concurrency: int | None = Field(default=None, ge=1)
    queue_limit: int | None = Field(default=None, ge=1)
    max_delay_ms: float = Field(default=0.0, ge=0)
    preferred_batch_sizes: list[int] = Field(default_factory=list)
    service_time_s: float = Field(default=0.0, ge=0)
    deadline_admission: bool = True
    batch_while_busy: bool = True
    # The server is not ready (``/readyz`` 503) while a required version is not loaded.
    required: bool = False
    # Where a model configured for an accelerator may run on the CPU when none is present.
    # Off by default: a silent fallback hides a misconfigured fleet.
    cpu_fallback: bool = False
    # A model whose exception messages are safe for its clients to read may show them (see README).
    expose_errors: bool = False
    isolation: Isolation = Isolation.THREAD
    # isolation: process only: the address-space cap of each model process.
    max_memory_mb: int | None = Field(default=None, ge=16)
    description: str = ""

    @model_validator(mode="after")
    def _references(self) -> ModelSpec:
        if not RUNTIME_REF.fullmatch(self.runtime):
            raise ValueError(
                f"runtime: {self.runtime!r} must be a runtime's name (a built-in one or a plug-in's) "
                "or an import string 'package.module:Class'"
            )
        for field_name in HOOKS:
            check_module_ref(field_name, getattr(self, field_name))
        if self.max_memory_mb is not None and self.isolation is not Isolation.PROCESS:
            raise ValueError("max_memory_mb needs isolation: process (a thread shares the server's memory)")
        if self.required and not self.load_at_start:
            raise ValueError("required: true needs load_at_start: true (readiness waits for the load)")
        for field_name in ("inputs", "outputs"):
            declared = getattr(self, field_name) or []
            names = [spec.name for spec in declared]
            if len(set(names)) != len(names):
                raise ValueError(f"{field_name}: tensor names must be unique, got {names}")
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_sizes: {size} must be between 1 and max_batch_size ({self.max_batch_size})"
                )
        return self

    @property
    def runtime_keys(self) -> dict[str, Any]:
        """The keys that are not inferd's own: the runtime's options."""
        return dict(self.model_extra or {})

    def lane_policy(self) -> LanePolicy:
        return LanePolicy(
            weight=self.weight,
            max_concurrency=self.max_concurrency,
            queue_limit=self.queue_limit,
            max_delay_s=self.max_delay_ms / 1000.0,
            preferred_batch_sizes=tuple(self.preferred_batch_sizes),
            service_time_s=self.service_time_s,
            deadline_admission=self.deadline_admission,
            batch_while_busy=self.batch_while_busy,
        )


def check_module_ref(key: str, ref: str | None) -> None:
    if ref is not None and (ref.count(":") != 1 or not all(ref.split(":"))):
        raise ValueError(f"{key}: {ref!r} must look like 'module:attr'")


def read_model_spec(path: Path) -> ModelSpec:
    """Parse and validate one model.yaml; ConfigError names the file and what is wrong."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must be a YAML mapping with at least 'runtime:'")
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {validation_problems(exc, whole='')}") from exc
