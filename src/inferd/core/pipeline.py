"""A model version as a pipeline: preprocessor → validator → model → postprocessor.

Stage semantics: the ``input_schema`` (checked on the item as the client sent it), a ``ValueError``
from the preprocessor or the validator → ``invalid_input``; any other exception anywhere →
``inference_error``. Everything here runs on executor threads, never on the event loop.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from inferd.core.errors import InferdError, InferenceError, InvalidInputError
from inferd.core.tensors import TensorDeclarations, TensorRows, check_declared, outputs_to_tensors
from inferd.runtimes.base import ModelRuntime

logger = logging.getLogger("inferd.pipeline")

MAX_CAUSE_CHARS = 300


@dataclass(slots=True)
class PipelineCall:
    """One client request's items. ``indexed``: name the item index in error messages (batch calls).
    ``parameters``: the request's parameters for the model; calls merged into one model call share them.
    Items given as :class:`TensorRows` (V2) are checked against the declared inputs, and the call's
    outcome is its output tensors (:class:`Tensor` list) instead of per-item outputs."""

    items: Sequence[Any]
    indexed: bool
    parameters: dict[str, Any] | None = None


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


def _cause(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_CAUSE_CHARS else text[: MAX_CAUSE_CHARS - 3] + "..."


def _join(parts: list[Sequence[Any]]) -> Sequence[Any]:
    """The items of merged calls as one sequence; arrays of rows (tensor requests) stay one array, so
    the model gets a batch without a Python loop per row."""
    if len(parts) == 1:
        return parts[0]
    arrays: list[np.ndarray[Any, Any]] = []
    for part in parts:
        if isinstance(part, np.ndarray):
            arrays.append(part)
    if arrays and len(arrays) == len(parts):
        first = arrays[0]
        if all(a.dtype == first.dtype and a.shape[1:] == first.shape[1:] for a in arrays):
            return cast(Sequence[Any], np.concatenate(arrays))
    flat: list[Any] = []
    for part in parts:
        flat.extend(part)
    return flat


class Pipeline:
    def __init__(
        self,
        *,
        name: str,
        version: str,
        model: ModelRuntime,
        max_batch_size: int,
        schema_check: Callable[[Any], str | None] | None = None,
        preprocessor: Callable[[Any], Any] | None = None,
        validator: Callable[[Any], None] | None = None,
        postprocessor: Callable[[Any], Any] | None = None,
        tensors: TensorDeclarations | None = None,
        expose_errors: bool = False,
    ) -> None:
        self.name = name
        self.version = version
        self.model = model
        self.max_batch_size = max_batch_size
        self._schema_check = schema_check
        self._preprocessor = preprocessor
        self._validator = validator
        self._postprocessor = postprocessor
        self._expose_errors = expose_errors
        self._needs_preparation = any((schema_check, preprocessor, validator))
        self._has_hooks = preprocessor is not None or validator is not None
        self.tensors = tensors or TensorDeclarations()
        self.takes_parameters = takes_parameters(model.predict)
        # User hooks may be slow or blocking; a schema check alone is cheap enough for the event loop.
        self.preparation_blocks = preprocessor is not None or validator is not None

    def __repr__(self) -> str:
        return f"model {self.name} version {self.version}"

    def _failure(self, what: str, exc: BaseException) -> InferenceError:
        """The error for an exception in a stage: its text goes to the client only where the model opts
        in (``expose_errors``, or ``--dev``); otherwise the client gets ``what`` and the exception type,
        and the detail is logged under the request's id by the adapter."""
        detailed = f"{what}: {_cause(exc)}"
        if self._expose_errors:
            return InferenceError(detailed, cause=type(exc).__name__)
        return InferenceError(f"{what} ({type(exc).__name__})", cause=type(exc).__name__, detail=detailed)

    def check_parameters(self, parameters: dict[str, Any] | None) -> None:
        if parameters and not self.takes_parameters:
            raise InvalidInputError(
                f"{self!r} takes no parameters: its predict() has no 'parameters' argument; "
                'send the request without "parameters"'
            )

    def prepare(self, item: Any, where: str, *, schema: bool = True) -> Any:
        """Schema, preprocessor, validator for one item; raises InvalidInputError or InferenceError."""
        if schema and self._schema_check is not None:
            try:
                problem = self._schema_check(item)
            except Exception as exc:  # e.g. an unresolvable $ref: the schema is at fault, not the input
                logger.exception("input_schema check of %s:%s failed", self.name, self.version)
                raise self._failure(f"{where}input_schema check failed", exc) from exc
            if problem is not None:
                raise InvalidInputError(f"{where}does not match the model's input_schema: {problem}")
        if self._preprocessor is not None:
            try:
                item = self._preprocessor(item)
            except ValueError as exc:
                raise InvalidInputError(f"{where}rejected by the preprocessor: {exc}") from exc
            except Exception as exc:
                logger.exception("preprocessor of %s:%s failed", self.name, self.version)
                raise self._failure(f"{where}preprocessor failed", exc) from exc
        if self._validator is not None:
            try:
                self._validator(item)
            except ValueError as exc:
                raise InvalidInputError(f"{where}rejected by the validator: {exc}") from exc
            except Exception as exc:
                logger.exception("validator of %s:%s failed", self.name, self.version)
                raise self._failure(f"{where}validator failed", exc) from exc
        return item

    def prepare_call(self, call: PipelineCall) -> Sequence[Any]:
        items = call.items
        schema = True
        if isinstance(items, TensorRows):
            check_declared(items.tensors, self.tensors.inputs, model=repr(self))
            # Tensors were checked against the declared inputs; input_schema describes /v1 JSON items.
            if not self._has_hooks:
                return items.batch()
            items, schema = items.items(), False
        elif not self._needs_preparation:
            return items if isinstance(items, np.ndarray) else list(items)
        if call.indexed:
            return [self.prepare(item, f"inputs[{i}] ", schema=schema) for i, item in enumerate(items)]
        return [self.prepare(item, "input ", schema=schema) for item in items]

    def run_group(self, calls: Sequence[PipelineCall]) -> list[list[Any] | InferdError]:
        """Run several requests' items through the model in shared calls of at most max_batch_size.

        A request whose input is rejected fails alone; a failing model call fails the requests whose
        items it carried.
        """
        outcomes: list[list[Any] | InferdError] = [[] for _ in calls]
        parts: list[Sequence[Any]] = []
        owners: list[int] = []
        for index, call in enumerate(calls):
            try:
                prepared = self.prepare_call(call)
            except InferdError as exc:
                outcomes[index] = exc
                continue
            parts.append(prepared)
            owners.extend([index] * len(prepared))
        flat = _join(parts)
        parameters = calls[0].parameters if calls else None
        size = self.max_batch_size
        for start in range(0, len(flat), size):
            chunk = flat[start : start + size]
            chunk_owners = owners[start : start + size]
            try:
                if parameters:
                    outputs = self.model.predict(chunk, parameters=parameters)  # type: ignore[call-arg]
                else:
                    outputs = self.model.predict(chunk)
            except Exception as exc:
                logger.exception("model %s:%s failed", self.name, self.version)
                error = self._failure(f"model {self.name}:{self.version} failed", exc)
                for owner in set(chunk_owners):
                    outcomes[owner] = error
                continue
            if not isinstance(outputs, list | tuple) or len(outputs) != len(chunk):
                # inferd's own words about the model's contract: safe for the client to read.
                got = len(outputs) if isinstance(outputs, list | tuple) else type(outputs).__name__
                error = InferenceError(
                    f"model {self.name}:{self.version} failed: predict() must return a list of "
                    f"{len(chunk)} outputs, got {got}",
                    cause="TypeError",
                )
                logger.error("%s", error.message)
                for owner in set(chunk_owners):
                    outcomes[owner] = error
                continue
            for owner, output in zip(chunk_owners, outputs, strict=True):
                result = outcomes[owner]
                if isinstance(result, list):
                    result.append(output)
        if self._postprocessor is not None:
            for index, result in enumerate(outcomes):
                if isinstance(result, list):
                    try:
                        outcomes[index] = [self._postprocessor(output) for output in result]
                    except Exception as exc:
                        logger.exception("postprocessor of %s:%s failed", self.name, self.version)
                        outcomes[index] = self._failure("postprocessor failed", exc)
        for index, call in enumerate(calls):
            result = outcomes[index]
            if isinstance(call.items, TensorRows) and isinstance(result, list):
                try:
                    outcomes[index] = outputs_to_tensors(result, self.tensors.outputs)
                except InferdError as exc:
                    outcomes[index] = exc
        return outcomes
