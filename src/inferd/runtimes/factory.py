"""Turn a model version folder and its spec into a runnable Pipeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema

from inferd.core.errors import ConfigError, shorten
from inferd.core.model_spec import ModelSpec
from inferd.core.pipeline import Pipeline
from inferd.core.tensors import resolve_declarations
from inferd.runtimes.base import ModelRuntime
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


def load_runtime(spec: ModelSpec, version_dir: Path, modules: VersionModules) -> ModelRuntime:
    if spec.runtime == "python":
        from inferd.runtimes.python import load_python_model

        assert spec.model is not None
        return load_python_model(version_dir=version_dir, ref=spec.model, modules=modules)
    assert spec.artifact is not None
    artifact = version_dir / spec.artifact
    if spec.runtime == "sklearn":
        from inferd.runtimes.sklearn import load_sklearn_model

        return load_sklearn_model(artifact=artifact)
    from inferd.runtimes.onnx import load_onnx_model

    return load_onnx_model(artifact=artifact, device=spec.device, cpu_fallback=spec.cpu_fallback)


def build_pipeline(
    name: str, version: str, version_dir: Path, spec: ModelSpec, *, expose_errors: bool = False
) -> Pipeline:
    """``expose_errors``: show every model's exception text to clients (``--dev``); otherwise only
    models whose model.yaml says ``expose_errors: true`` do."""
    modules = VersionModules(version_dir, f"{name}_{version}")
    schema_check = (
        schema_checker(spec.input_schema, version_dir / "model.yaml")
        if spec.input_schema is not None
        else None
    )
    hooks: dict[str, Any] = {}
    for role in ("preprocessor", "validator", "postprocessor"):
        ref = getattr(spec, role)
        if ref is not None:
            hook = modules.resolve(ref, role=role)
            if not callable(hook):
                raise ConfigError(f"{version_dir / 'model.yaml'}: {role} {ref!r} is not callable")
            hooks[role] = hook
    model = load_runtime(spec, version_dir, modules)
    return Pipeline(
        name=name,
        version=version,
        model=model,
        max_batch_size=spec.max_batch_size,
        schema_check=schema_check,
        tensors=resolve_declarations(spec.inputs, spec.outputs, model),
        expose_errors=expose_errors or spec.expose_errors,
        **hooks,
    )
