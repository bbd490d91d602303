"""OpenTelemetry tracing, the ``inferd[otel]`` extra; imported only when tracing is on.

- A server span per HTTP request; a W3C ``traceparent`` (and ``tracestate``) on the way in is its parent,
  and the response carries the ``traceparent`` of this span.
- Under it, an ``inference model:version`` span per pipeline execution with child spans for the stages:
  ``queue wait``, ``preprocess``, ``validate``, ``model call``, ``postprocess`` (from the stamps the
  executor's thread writes into :class:`~inferd.core.tracing.StageTimings`).
- A job stores the ``traceparent`` of the request that submitted it; the worker that runs it opens a
  ``job`` span in that trace, with a ``job queued`` child covering the time the job waited.
- Configured by the standard variables: ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (OTLP over HTTP/protobuf), ``OTEL_SERVICE_NAME``,
  ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_SDK_DISABLED``.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from inferd.core.tracing import StageTimings
from inferd.logs import REQUEST_ID

_PROPAGATOR = TraceContextTextMapPropagator()
_CARRIED = (b"traceparent", b"tracestate")


def log_context() -> dict[str, str]:
    """``trace_id`` and ``span_id`` for log lines written inside a span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> Context | None:
    return _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None


class Tracing:
    """The tracer provider and everything inferd traces with it (no global provider is installed)."""

    def __init__(
        self, *, processor: SpanProcessor | None = None, exporter: SpanExporter | None = None
    ) -> None:
        attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "inferd"}
        self.provider = TracerProvider(resource=Resource.create(attributes))
        if processor is None:
            if exporter is None:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

                exporter = OTLPSpanExporter()
            processor = BatchSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("inferd")

    def current_traceparent(self) -> str | None:
        return current_traceparent()

    def shutdown(self) -> None:
        """Export what is buffered and stop."""
        self.provider.shutdown()

    # -- HTTP ---------------------------------------------------------------------------------------

    def asgi(self, app: Any) -> TracingASGI:
        return TracingASGI(app, self.tracer)

    # -- pipeline stages (core.tracing.RequestTracer) ---------------------------------------------

    def record(
        self, *, model: str, version: str, tenant: str, items: int, timings: StageTimings, error: str | None
    ) -> None:
        now = time.perf_counter_ns()
        offset = time.time_ns() - now

        def at(stamp: int) -> int:
            return (stamp or now) + offset

        span = self.tracer.start_span(
            f"inference {model}:{version}",
            start_time=at(timings.submitted),
            attributes={
                "inferd.model": model,
                "inferd.version": version,
                "inferd.tenant": tenant,
                "inferd.items": items,
            },
        )
        parent = trace.set_span_in_context(span)
        stages = (
            ("queue wait", timings.submitted, timings.started),
            ("preprocess", timings.started, timings.preprocessed),
            ("validate", timings.preprocessed, timings.validated),
            ("model call", timings.validated, timings.predicted),
            ("postprocess", timings.predicted, timings.finished),
        )
        for name, start, end in stages:
            if not start:
                break  # not reached: the request was answered (e.g. timed out) before
            self.tracer.start_span(name, context=parent, start_time=at(start)).end(end_time=at(end))
            if not end:
                break
        if error is not None:
            span.set_attribute("inferd.error", error)
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=at(now))

    # -- jobs ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def job_span(
        self,
        *,
        job_id: str,
        model: str,
        version: str,
        attempt: int,
        traceparent: str | None,
        queued_since: datetime | None,
    ) -> Iterator[Span]:
        """The worker's span for one attempt of a job, in the trace of the request that submitted it."""
        parent = context_from(traceparent)
        attributes: dict[str, str | int] = {
            "inferd.job_id": job_id,
            "inferd.model": model,
            "inferd.version": version,
            "inferd.attempt": attempt,
        }
        with self.tracer.start_as_current_span(
            f"job {model}:{version}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes
        ) as span:
            if queued_since is not None:
                queued = self.tracer.start_span("job queued", start_time=int(queued_since.timestamp() * 1e9))
                queued.end(end_time=time.time_ns())
            yield span


class TracingASGI:
    """Outermost ASGI layer: one server span per HTTP request, W3C trace context in and out."""

    def __init__(self, app: Any, tracer: trace.Tracer) -> None:
        self._app = app
        self._tracer = tracer

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _CARRIED
        }
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        method, path = scope["method"], scope["path"]
        attributes = {"http.request.method": method, "url.path": path}
        with self._tracer.start_as_current_span(
            f"{method} {path}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:

            async def send_traced(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    request_id = REQUEST_ID.get()
                    if request_id:
                        span.set_attribute("inferd.request_id", request_id)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                    outgoing: dict[str, str] = {}
                    _PROPAGATOR.inject(outgoing)
                    headers = list(message.get("headers", []))
                    headers.extend((name.encode(), value.encode()) for name, value in outgoing.items())
                    message = {**message, "headers": headers}
                await send(message)

            await self._app(scope, receive, send_traced)
