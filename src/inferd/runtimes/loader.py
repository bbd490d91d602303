"""Import user code (``module:attr``) from a model version folder, isolated per version."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from inferd.core.errors import ConfigError


class VersionModules:
    """Imports each module of one version folder once, under a name unique to (model, version)."""

    def __init__(self, version_dir: Path, namespace: str) -> None:
        self._dir = version_dir
        self._namespace = re.sub(r"\W", "_", namespace)
        self._modules: dict[str, ModuleType] = {}

    def resolve(self, ref: str, *, role: str) -> Any:
        module_name, _, attr = ref.partition(":")
        module = self._modules.get(module_name)
        if module is None:
            module = self._import(module_name, role=role)
            self._modules[module_name] = module
        try:
            return getattr(module, attr)
        except AttributeError:
            raise ConfigError(
                f"{role} {ref!r}: module {module_name}.py in {self._dir} has no attribute {attr!r}"
            ) from None

    def _import(self, module_name: str, *, role: str) -> ModuleType:
        file = self._dir / (module_name.replace(".", "/") + ".py")
        if not file.is_file():
            raise ConfigError(
                f"{role}: {file} does not exist (module {module_name!r} must be a .py file there)"
            )
        unique = f"inferd_models.{self._namespace}.{re.sub(r'[^0-9A-Za-z_]', '_', module_name)}"
        spec = importlib.util.spec_from_file_location(unique, file)
        if spec is None or spec.loader is None:
            raise ConfigError(f"{role}: cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module  # dataclasses and pickle look modules up by name
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[unique]
            raise ConfigError(f"{role}: importing {file} failed: {type(exc).__name__}: {exc}") from exc
        return module
