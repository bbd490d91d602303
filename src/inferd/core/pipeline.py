"""A model version as a pipeline: preprocessor → validator → model → postprocessor.

Stage semantics: the ``input_schema`` (checked on the item as the client sent it), a ``ValueError``
from the preprocessor or the validator → ``invalid_input``; any other exception anywhere →
``inference_error``. Everything here runs on executor threads, never on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inferd.core.errors import (
    DEADLINE_CAUSE,
    InferdError,
    InferenceError,
    InvalidInputError,
    ModelNotReadyError,
)
from inferd.core.runtime import Batch, Runtime
from inferd.core.tensors import (
    Columns,
    TensorDeclarations,
    TensorRows,
    check_declared,
    outputs_to_tensors,
)
from inferd.core.tracing import StageTimings

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
    timings: StageTimings | None = None  # only when tracing is on


def _type_name(exc: BaseException) -> str:
    # An exception raised in a model process arrives as one type carrying the model's own type name.
    return str(getattr(exc, "type_name", type(exc).__name__))


def _cause(exc: BaseException) -> str:
    text = f"{_type_name(exc)}: {exc}"
    return text if len(text) <= MAX_CAUSE_CHARS else text[: MAX_CAUSE_CHARS - 3] + "..."


def _join(parts: list[Batch]) -> Batch:
    """The items of merged calls as one sequence; arrays of rows (tensor requests) stay one array, and
    Columns (several inputs) one array per input, so the model gets a batch without a Python loop per row."""
    if len(parts) == 1:
        return parts[0]
    columns = Columns.join(parts)
    if columns is not None:
        return columns
    arrays: list[np.ndarray[Any, Any]] = []
    for part in parts:
        if isinstance(part, np.ndarray):
            arrays.append(part)
    if arrays and len(arrays) == len(parts):
        first = arrays[0]
        if all(a.dtype == first.dtype and a.shape[1:] == first.shape[1:] for a in arrays):
            return np.concatenate(arrays)
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
        model: Runtime,
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
        # Runtimes without their own check_batch skip the call (every request passes here).
        self._check_batch = None if type(model).check_batch is Runtime.check_batch else model.check_batch
        self.takes_parameters = model.takes_parameters
        # User hooks may be slow or blocking; a schema check alone is cheap enough for the event loop.
        self.preparation_blocks = preprocessor is not None or validator is not None
        # Lifecycle: calls running now (on executor threads); retired by a reload or shutdown, the
        # runtime is unloaded once none runs.
        self._lock = threading.Lock()
        self._running = 0
        self._retired = False
        self._unloaded = False
        # isolation: process — which executor thread runs which requests, so a call every request of
        # which timed out can be stopped (its model process killed).
        self._cancel: Callable[[int], None] | None = getattr(model, "cancel", None)
        self._calls_of: dict[int, set[int]] = {}  # executor thread id -> ids of its calls not timed out
        self._thread_of: dict[int, int] = {}  # call id -> executor thread id
        if self._cancel is not None:
            model.still_wanted = self._still_wanted  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"model {self.name} version {self.version}"

    def _failure(self, what: str, exc: BaseException) -> InferenceError:
        """The error for an exception in a stage: its text goes to the client only where the model opts
        in (``expose_errors``, or ``--dev``); otherwise the client gets ``what`` and the exception type,
        and the detail is logged under the request's id by the adapter."""
        detailed = f"{what}: {_cause(exc)}"
        name = _type_name(exc)
        if self._expose_errors:
            return InferenceError(detailed, cause=name)
        return InferenceError(f"{what} ({name})", cause=name, detail=detailed)

    def check_parameters(self, parameters: dict[str, Any] | None) -> None:
        if parameters and not self.takes_parameters:
            raise InvalidInputError(
                f"{self!r} takes no parameters: its predict() has no 'parameters' argument; "
                'send the request without "parameters"'
            )

    def prepare(self, item: Any, where: str, *, schema: bool = True) -> Any:
        """Schema, preprocessor, validator for one item; raises InvalidInputError or InferenceError."""
        item = self.preprocess(item, where, schema=schema)
        self.validate(item, where)
        return item

    def preprocess(self, item: Any, where: str, *, schema: bool = True) -> Any:
        """Schema and preprocessor for one item."""
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
        return item

    def validate(self, item: Any, where: str) -> None:
        if self._validator is not None:
            try:
                self._validator(item)
            except ValueError as exc:
                raise InvalidInputError(f"{where}rejected by the validator: {exc}") from exc
            except Exception as exc:
                logger.exception("validator of %s:%s failed", self.name, self.version)
                raise self._failure(f"{where}validator failed", exc) from exc

    def prepare_call(self, call: PipelineCall) -> Batch:
        items: Any = call.items
        prepared: Batch
        if isinstance(items, TensorRows):
            check_declared(items.tensors, self.tensors.inputs, model=repr(self))
            # Tensors were checked against the declared inputs; input_schema describes /v1 JSON items.
            if self._has_hooks:
                prepared = self._prepare_items(
                    items.items(), call.indexed, schema=False, timings=call.timings
                )
            else:
                prepared = items.batch()
        elif not self._needs_preparation:
            prepared = items if isinstance(items, np.ndarray) else list(items)
        else:
            prepared = self._prepare_items(items, call.indexed, schema=True, timings=call.timings)
        if self._check_batch is None:
            return prepared
        try:
            return self._check_batch(prepared)
        except ValueError as exc:  # InputRejected, or a plain ValueError as from the hooks
            index = getattr(exc, "index", None)
            where = "input" if not call.indexed else "inputs" if index is None else f"inputs[{index}]"
            raise InvalidInputError(f"{where}: {exc}") from exc
        except Exception as exc:
            logger.exception("input check of %s:%s failed", self.name, self.version)
            raise self._failure("input check failed", exc) from exc

    def _prepare_items(
        self, items: Sequence[Any], indexed: bool, *, schema: bool, timings: StageTimings | None = None
    ) -> list[Any]:
        if timings is not None:
            return self._prepare_traced(items, indexed, schema, timings)
        if indexed:
            return [self.prepare(item, f"inputs[{i}] ", schema=schema) for i, item in enumerate(items)]
        return [self.prepare(item, "input ", schema=schema) for item in items]

    def _prepare_traced(
        self, items: Sequence[Any], indexed: bool, schema: bool, timings: StageTimings
    ) -> list[Any]:
        """All items through schema and preprocessor, then all through the validator, so each stage is one
        span. (A request with several bad items may have another one of them reported than untraced.)"""
        wheres = [f"inputs[{i}] " for i in range(len(items))] if indexed else ["input "] * len(items)
        prepared = [
            self.preprocess(item, where, schema=schema) for item, where in zip(items, wheres, strict=True)
        ]
        timings.preprocessed = time.perf_counter_ns()
        for item, where in zip(prepared, wheres, strict=True):
            self.validate(item, where)
        return prepared

    def retire(self) -> None:
        """Take no new model calls; unload the runtime now, or when the calls running now return."""
        with self._lock:
            self._retired = True
            idle = self._running == 0 and not self._unloaded
            self._unloaded = self._unloaded or idle
        if idle:
            self._unload()

    def _unload(self) -> None:
        try:
            self.model.unload()
        except Exception:
            logger.exception("unloading %s:%s failed", self.name, self.version)
        else:
            logger.info("unloaded model %s version %s", self.name, self.version)

    def run_group(self, calls: Sequence[PipelineCall]) -> list[list[Any] | InferdError]:
        """Run several requests' items through the model in shared calls of at most max_batch_size.

        A request whose input is rejected fails alone; a failing model call fails the requests whose
        items it carried.
        """
        with self._lock:
            if self._unloaded:
                gone = ModelNotReadyError(
                    f"{self!r} was unloaded by a reload or shutdown while this request waited; retry it"
                )
                return [gone for _ in calls]
            self._running += 1
            if self._cancel is not None:
                ident = threading.get_ident()
                self._calls_of[ident] = {id(call) for call in calls}
                self._thread_of.update((id(call), ident) for call in calls)
        try:
            return self._run_group(calls)
        finally:
            with self._lock:
                if self._cancel is not None:
                    self._calls_of.pop(threading.get_ident(), None)
                    for call in calls:
                        self._thread_of.pop(id(call), None)
                self._running -= 1
                last = self._retired and self._running == 0 and not self._unloaded
                self._unloaded = self._unloaded or last
            if last:
                self._unload()

    def _still_wanted(self) -> bool:
        """Whether a request of this executor thread's running call still waits for its result."""
        with self._lock:
            return bool(self._calls_of.get(threading.get_ident()))

    def abandon(self, call: PipelineCall) -> bool:
        """The executor answered ``call`` with a timeout. When no request of its model call is waiting
        any more, a model process running it is stopped (a thread cannot be). Returns whether the
        call's model process was told to stop (its run time then measures the deadline, not the model)."""
        if self._cancel is None:
            return False
        with self._lock:
            ident = self._thread_of.pop(id(call), None)
            waiting = self._calls_of.get(ident) if ident is not None else None
            if ident is None or waiting is None:
                return False
            waiting.discard(id(call))
            if waiting:
                return False
        self._cancel(ident)
        return True

    def _run_group(self, calls: Sequence[PipelineCall]) -> list[list[Any] | InferdError]:
        outcomes: list[list[Any] | InferdError] = [[] for _ in calls]
        parts: list[Batch] = []
        owners: list[int] = []
        timed = [call.timings for call in calls if call.timings is not None]
        if timed:
            started = time.perf_counter_ns()
            for timings in timed:
                timings.started = timings.preprocessed = started
        for index, call in enumerate(calls):
            try:
                prepared = self.prepare_call(call)
            except InferdError as exc:
                outcomes[index] = exc
                continue
            parts.append(prepared)
            owners.extend([index] * len(prepared))
        if timed:
            validated = time.perf_counter_ns()
            for timings in timed:
                timings.validated = validated
        flat = _join(parts)
        parameters = calls[0].parameters if calls else None
        size = self.max_batch_size
        for start in range(0, len(flat), size):
            chunk = flat[start : start + size]
            chunk_owners = owners[start : start + size]
            try:
                outputs = self.model.predict(chunk, parameters)
            except InferdError as exc:  # inferd's own words (e.g. the model process exited)
                level = logging.WARNING if exc.cause == DEADLINE_CAUSE else logging.ERROR
                logger.log(level, "model %s:%s failed: %s", self.name, self.version, exc.message)
                for owner in set(chunk_owners):
                    outcomes[owner] = exc
                continue
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
        if timed:
            predicted = time.perf_counter_ns()
            for timings in timed:
                timings.predicted = predicted
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
        if timed:
            finished = time.perf_counter_ns()
            for timings in timed:
                timings.finished = finished
        return outcomes
