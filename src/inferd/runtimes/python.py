"""The python runtime: the user's own class with ``predict(batch)`` and optional ``load(path)``,
``unload()`` and ``parameters`` argument, adapted to the runtime contract."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import Field, field_validator

from inferd.core.errors import ConfigError
from inferd.core.model_spec import check_module_ref
from inferd.core.runtime import Batch, Runtime, RuntimeOptions
from inferd.runtimes.loader import VersionModules


class PythonOptions(RuntimeOptions):
    model: str = Field(description="module:attr in the version folder: a class or a zero-argument factory")

    @field_validator("model")
    @classmethod
    def _ref(cls, ref: str) -> str:
        check_module_ref("model", ref)
        return ref


def takes_parameters(predict: Callable[..., Any]) -> bool:
    """Whether ``predict`` accepts a ``parameters`` keyword (or any keyword)."""
    try:
        signature = inspect.signature(predict)
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return any(
        (name == "parameters" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        or p.kind is p.VAR_KEYWORD
        for name, p in signature.parameters.items()
    )


class PythonRuntime(Runtime):
    Options = PythonOptions

    instance: Any = None

    def load(self) -> None:
        context = self.context
        assert isinstance(context.options, PythonOptions)
        ref = context.options.model
        modules = context.modules or VersionModules(context.path, f"{context.name}_{context.version}")
        target = modules.resolve(ref, role="model")
        if not callable(target):
            raise ConfigError(f"model {ref!r} in {context.path} must be a class or a factory function")
        instance: Any = target()
        predict = getattr(instance, "predict", None)
        if not callable(predict):
            raise ConfigError(f"model {ref!r} in {context.path} has no predict(self, batch) method")
        load = getattr(instance, "load", None)
        if callable(load):
            load(str(context.path))
        self.instance = instance
        self._predict = predict
        self.takes_parameters = takes_parameters(predict)

    def predict(self, batch: Batch, parameters: Mapping[str, Any] | None) -> Sequence[Any]:
        if parameters:
            return self._predict(batch, parameters=parameters)
        return self._predict(batch)

    def unload(self) -> None:
        unload = getattr(self.instance, "unload", None)
        if callable(unload):
            unload()
        self.instance = None
        del self._predict
