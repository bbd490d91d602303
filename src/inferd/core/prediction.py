"""PredictionService: the one path every inference takes (sync, batch, V2, job attempts).

It resolves the version, counts the request, times it, classifies errors, and hands the work to the
device executor. It is the only place inference metrics are recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from inferd.core.errors import InferdError, InvalidInputError, ModelNotFoundError
from inferd.core.executor import DeviceExecutor
from inferd.core.pipeline import PipelineCall
from inferd.core.registry import ModelRegistry, ModelVersion
from inferd.core.tracing import RequestTracer, StageTimings


# The metrics this service records, as protocols: core owns them, ``inferd.metrics`` implements them
# with prometheus_client (core never imports it).
class CounterChild(Protocol):
    def inc(self, amount: float = ...) -> None: ...


class HistogramChild(Protocol):
    def observe(self, amount: float) -> None: ...


class LabelledCounter(Protocol):
    def labels(self, *values: str) -> CounterChild: ...


class InferenceMetrics(Protocol):
    @property
    def requests(self) -> LabelledCounter: ...

    def request_children(
        self, model: str, version: str, tenant: str
    ) -> tuple[CounterChild, HistogramChild]: ...

    def error_child(self, model: str, version: str, error_type: str, tenant: str) -> CounterChild: ...


class UnknownLabels(Protocol):
    def labels(self, model: str, version: str) -> tuple[str, str]:
        """Label values for a (model, version) that does not exist, bounded in number."""
        ...


def parameters_key(parameters: dict[str, Any] | None) -> bytes | None:
    """Requests merge into one model call only when their parameters are equal."""
    if not parameters:
        return None
    try:
        return orjson.dumps(parameters, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise InvalidInputError(f'"parameters" must be plain JSON: {exc}') from None


@dataclass(slots=True)
class Prediction:
    model: str
    version: str
    outputs: list[Any]


class PredictionService:
    def __init__(
        self,
        *,
        registry: ModelRegistry,
        executors: Mapping[str, DeviceExecutor],
        metrics: InferenceMetrics,
        unknown_labels: UnknownLabels,
        tracer: RequestTracer | None = None,
    ) -> None:
        self.registry = registry
        self.executors = executors
        self._metrics = metrics
        self._unknown = unknown_labels
        self._tracer = tracer

    def resolve(self, model: str, version: str | None, *, tenant: str) -> ModelVersion:
        """Resolve through routing; an unknown (model, version) is counted as a failed request."""
        try:
            return self.registry.resolve(model, version, tenant=tenant)
        except ModelNotFoundError:
            label_model, label_version = self._unknown.labels(model, version or "")
            self._metrics.requests.labels(label_model, label_version, tenant).inc()
            self._metrics.error_child(label_model, label_version, "model_not_found", tenant).inc()
            raise

    async def predict(
        self,
        *,
        tenant: str,
        model: str,
        version: str | None,
        inputs: Sequence[Any],
        indexed: bool,
        timeout_s: float | None = None,
        parameters: dict[str, Any] | None = None,
        resolved: ModelVersion | None = None,
    ) -> Prediction:
        target = resolved if resolved is not None else self.resolve(model, version, tenant=tenant)
        name, resolved_version = target.name, target.version
        requests, latency = self._metrics.request_children(name, resolved_version, tenant)
        requests.inc()
        started = time.perf_counter()
        executed = False
        error: str | None = None
        timings = StageTimings(submitted=time.perf_counter_ns()) if self._tracer is not None else None
        try:
            pipeline = target.pipeline
            if pipeline is None:
                pipeline = await self.registry.ensure_loaded(target)
            # timeout_s bounds one model call; a request that needs several calls gets one budget per call.
            calls = max(1, -(-len(inputs) // target.spec.max_batch_size))
            budget = target.spec.timeout_s * calls
            limit = budget if timeout_s is None else min(timeout_s, budget)
            executor = self.executors[target.spec.device]
            pipeline.check_parameters(parameters)
            group = parameters_key(parameters)
            future = executor.submit(
                pipeline,
                PipelineCall(inputs, indexed, parameters or None, timings),
                size=len(inputs),
                timeout_s=limit,
                group=group,
                tenant=tenant,
                policy=target.lane_policy,
                client_deadline=limit < budget,
            )
            executed = True
            outputs: list[Any] = await future
        except InferdError as exc:
            error = exc.code
            exc.version = resolved_version
            if executed:
                latency.observe(time.perf_counter() - started)
            self._metrics.error_child(name, resolved_version, exc.code, tenant).inc()
            raise
        except asyncio.CancelledError:
            # The client went away; the call still ran (or runs) to completion on the executor.
            error = "cancelled"
            latency.observe(time.perf_counter() - started)
            raise
        finally:
            if executed and timings is not None and self._tracer is not None:
                self._tracer.record(
                    model=name,
                    version=resolved_version,
                    tenant=tenant,
                    items=len(inputs),
                    timings=timings,
                    error=error,
                )
        latency.observe(time.perf_counter() - started)
        return Prediction(name, resolved_version, outputs)
