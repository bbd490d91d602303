"""The python runtime: the user's own class with ``predict(batch)`` and optional ``load(path)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from inferd.core.errors import ConfigError
from inferd.runtimes.base import ModelRuntime
from inferd.runtimes.loader import VersionModules


def load_python_model(*, version_dir: Path, ref: str, modules: VersionModules) -> ModelRuntime:
    target = modules.resolve(ref, role="model")
    if not callable(target):
        raise ConfigError(f"model {ref!r} in {version_dir} must be a class or a factory function")
    instance: Any = target()
    if not callable(getattr(instance, "predict", None)):
        raise ConfigError(f"model {ref!r} in {version_dir} has no predict(self, batch) method")
    load = getattr(instance, "load", None)
    if callable(load):
        load(str(version_dir))
    return instance
