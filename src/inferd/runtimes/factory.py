"""Turn a model version folder and its spec into a runnable Pipeline (the registry's loader)."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import ValidationError

from inferd.core.errors import ConfigError, InferdError, shorten, validation_problem
from inferd.core.model_spec import HOOKS, Isolation, ModelSpec
from inferd.core.pipeline import Pipeline
from inferd.core.runtime import ModelProcessRestart, ModuleResolver, Runtime, RuntimeContext, RuntimeOptions
from inferd.core.tensors import resolve_declarations
from inferd.runtimes.catalog import RuntimeCatalog
from inferd.runtimes.loader import VersionModules


def schema_checker(schema: dict[str, Any], where: Path) -> Callable[[Any], str | None]:
    try:
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"{where}: input_schema is not a valid JSON Schema: {exc.message}") from exc
    validator = validator_cls(schema)

    def check(item: Any) -> str | None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(item))
        if error is None:
            return None
        location = "".join(f"[{p!r}]" for p in error.absolute_path)
        # The message quotes the offending value, which may be as large as the request.
        return shorten(f"{location} {error.message}".strip() if location else error.message)

    return check


def runtime_options(cls: type[Runtime], spec: ModelSpec, where: Path) -> RuntimeOptions:
    """The runtime's own model.yaml keys, validated by its Options model."""
    try:
        return cls.Options.model_validate(spec.runtime_keys)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"])
            if error["type"] == "extra_forbidden":
                takes = ", ".join(cls.Options.model_fields) or "no keys of its own"
                close = difflib.get_close_matches(
                    key, [*ModelSpec.model_fields, *cls.Options.model_fields], 1
                )
                hint = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(
                    f"unknown key {key!r}{hint} (inferd's keys: {', '.join(ModelSpec.model_fields)}; "
                    f"the {spec.runtime!r} runtime takes: {takes})"
                )
            elif error["type"] == "missing":
                field = cls.Options.model_fields.get(key)
                meaning = f" ({field.description})" if field is not None and field.description else ""
                problems.append(f"the {spec.runtime!r} runtime needs {key!r}{meaning}")
            else:
                problems.append(validation_problem(error))
        raise ConfigError(f"{where}: {'; '.join(problems)}") from exc


class PipelineFactory:
    """Builds a version's pipeline: resolves and loads its runtime, imports its hooks."""

    def __init__(
        self,
        *,
        catalog: RuntimeCatalog | None = None,
        expose_errors: bool = False,
        process_slots: Callable[[ModelSpec], int] | None = None,
        on_restart: Callable[[str, ModelProcessRestart], None] | None = None,
    ) -> None:
        """``expose_errors``: show every model's exception text to clients (``--dev``); otherwise only
        models whose model.yaml says ``expose_errors: true`` do. ``process_slots``: how many model
        processes a version with ``isolation: process`` gets (its executor slots); ``on_restart(device,
        reason)`` is told when one is replaced."""
        self.catalog = catalog or RuntimeCatalog()
        self.expose_errors = expose_errors
        self.process_slots = process_slots
        self.on_restart = on_restart

    def check(self, spec: ModelSpec, spec_file: Path) -> None:
        try:
            cls = self.catalog.resolve(spec.runtime)
        except ConfigError as exc:
            raise ConfigError(f"{spec_file}: {exc.message}") from exc
        runtime_options(cls, spec, spec_file)

    def runtime(
        self,
        name: str,
        version: str,
        version_dir: Path,
        spec: ModelSpec,
        *,
        modules: ModuleResolver | None = None,
    ) -> Runtime:
        """The loaded runtime of one version; errors name the runtime and what is missing."""
        where = version_dir / "model.yaml"
        cls = self.catalog.resolve(spec.runtime)
        options = runtime_options(cls, spec, where)
        try:
            runtime: Runtime
            if spec.isolation is Isolation.PROCESS:
                runtime = self._process_runtime(RuntimeContext(name, version, version_dir, spec, options))
            else:
                runtime = cls(RuntimeContext(name, version, version_dir, spec, options, modules))
            runtime.load()
        except InferdError as exc:
            if repr(spec.runtime) not in exc.message:
                exc.message = f"runtime {spec.runtime!r}: {exc.message}"
                exc.args = (exc.message,)
            raise
        except Exception as exc:
            raise ConfigError(
                f"runtime {spec.runtime!r}: loading {where.parent} failed: {type(exc).__name__}: {exc}"
            ) from exc
        return runtime

    def _process_runtime(self, context: RuntimeContext) -> Runtime:
        from inferd.runtimes.isolation import ProcessRuntime

        device, on_restart = context.spec.device, self.on_restart
        return ProcessRuntime(
            context,
            slots=self.process_slots(context.spec) if self.process_slots is not None else 1,
            on_restart=(lambda reason: on_restart(device, reason)) if on_restart is not None else None,
        )

    def __call__(self, name: str, version: str, version_dir: Path, spec: ModelSpec) -> Pipeline:
        modules = VersionModules(version_dir, f"{name}_{version}")
        schema_check = (
            schema_checker(spec.input_schema, version_dir / "model.yaml")
            if spec.input_schema is not None
            else None
        )
        hooks: dict[str, Any] = {}
        for role in HOOKS:
            ref = getattr(spec, role)
            if ref is not None:
                hook = modules.resolve(ref, role=role)
                if not callable(hook):
                    raise ConfigError(f"{version_dir / 'model.yaml'}: {role} {ref!r} is not callable")
                hooks[role] = hook
        model = self.runtime(name, version, version_dir, spec, modules=modules)
        return Pipeline(
            name=name,
            version=version,
            model=model,
            max_batch_size=spec.max_batch_size,
            schema_check=schema_check,
            tensors=resolve_declarations(spec.inputs, spec.outputs, model),
            expose_errors=self.expose_errors or spec.expose_errors,
            **hooks,
        )
