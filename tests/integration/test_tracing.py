"""OpenTelemetry tracing (the inferd[otel] extra): spans recorded with the SDK's in-memory exporter for an
in-process server, and a real `inferd serve` exporting OTLP/HTTP to a receiver this test runs."""

from __future__ import annotations

import asyncio
import http.server
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from inferd_http_testkit import (
    ADMIN_KEY,
    API_KEYS,
    JOBS_KEY,
    PREDICT_KEY,
    Lifespan,
    bearer,
    make_settings,
    running_server,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from inferd.bootstrap import build_app, build_engine
from inferd.core.settings import load_settings, otel_requested
from inferd.tracing import Tracing, log_context

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
STAGES = ["queue wait", "preprocess", "validate", "model call", "postprocess"]


class TracedAPI:
    """An in-process server whose spans land in memory; its job worker runs in the same process."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="inferd-trace-"))
        self.exporter = InMemorySpanExporter()
        self.settings = make_settings(self.workdir, worker=True, worker_poll_s=0.05)
        self.loop = asyncio.new_event_loop()
        engine = build_engine(self.settings, tracing=Tracing(processor=SimpleSpanProcessor(self.exporter)))
        self.app = build_app(self.settings, engine=engine)
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test")
        self.lifespan = Lifespan(self.app)
        self.loop.run_until_complete(self.lifespan.startup())

    def request(self, method: str, url: str, *, key: str, **kwargs: Any) -> httpx.Response:
        headers = {**bearer(key), **kwargs.pop("headers", {})}
        return self.loop.run_until_complete(self.client.request(method, url, headers=headers, **kwargs))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.lifespan.shutdown())
        self.loop.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def api() -> Iterator[TracedAPI]:
    instance = TracedAPI()
    try:
        yield instance
    finally:
        instance.close()


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    found = [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]
    return sorted(found, key=lambda s: s.start_time or 0)


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    matching = [s for s in spans if s.name == name]
    assert len(matching) == 1, [s.name for s in spans]
    return matching[0]


def test_a_request_continues_the_callers_trace_with_a_span_per_stage(api: TracedAPI) -> None:
    api.exporter.clear()
    response = api.request(
        "POST",
        "/v1/models/ok/versions/1/predict",
        key=PREDICT_KEY,
        json={"input": 1},
        headers={"traceparent": TRACEPARENT},
    )
    assert response.status_code == 200
    returned = response.headers["traceparent"].split("-")
    assert returned[1] == TRACE_ID and returned[2] != PARENT_SPAN

    spans = api.spans()
    server = one(spans, "POST /v1/models/ok/versions/1/predict")
    assert server.context is not None and server.parent is not None
    assert f"{server.context.trace_id:032x}" == TRACE_ID and f"{server.parent.span_id:016x}" == PARENT_SPAN
    assert f"{server.context.span_id:016x}" == returned[2]
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    assert server.attributes["inferd.request_id"] == response.headers["x-request-id"]

    (inference,) = children(spans, server)
    assert inference.name == "inference ok:1"
    assert inference.attributes is not None and inference.attributes["inferd.tenant"] == "acme"
    stages = children(spans, inference)
    assert [s.name for s in stages] == STAGES
    assert inference.start_time is not None and inference.end_time is not None
    previous_end = inference.start_time
    for stage in stages:
        assert stage.start_time is not None and stage.end_time is not None
        assert previous_end <= stage.start_time <= stage.end_time <= inference.end_time
        previous_end = stage.end_time


def test_a_request_without_trace_context_starts_a_trace_and_errors_mark_the_span(api: TracedAPI) -> None:
    api.exporter.clear()
    response = api.request("POST", "/v1/models/boom/predict", key=PREDICT_KEY, json={"input": 1})
    assert response.status_code == 500
    assert response.headers["traceparent"].startswith("00-")
    spans = api.spans()
    inference = one(spans, "inference boom:1")
    assert inference.status.status_code.name == "ERROR"
    assert inference.attributes is not None and inference.attributes["inferd.error"] == "inference_error"
    server = one(spans, "POST /v1/models/boom/predict")
    assert server.status.status_code.name == "ERROR"


def test_a_job_is_traced_from_submission_through_its_queue_to_the_worker(api: TracedAPI) -> None:
    api.exporter.clear()
    submitted = api.request(
        "POST",
        "/v1/models/ok/jobs",
        key=JOBS_KEY,
        json={"input": {"x": 1}},
        headers={"traceparent": TRACEPARENT},
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    done = api.request("GET", f"/v1/jobs/{job_id}", key=JOBS_KEY, params={"wait": 10})
    assert done.json()["status"] == "succeeded"

    def job_span() -> ReadableSpan | None:
        return next((s for s in api.spans() if s.name == "job ok:1"), None)

    deadline = time.monotonic() + 10
    while job_span() is None and time.monotonic() < deadline:
        api.loop.run_until_complete(asyncio.sleep(0.02))
    spans = api.spans()
    submit = one(spans, "POST /v1/models/ok/jobs")
    job = job_span()
    assert (
        job is not None and job.context is not None and job.parent is not None and submit.context is not None
    )
    # One trace: the caller's, through the submitting request, to the worker's attempt.
    assert f"{job.context.trace_id:032x}" == TRACE_ID
    assert job.parent.span_id == submit.context.span_id
    assert job.attributes is not None and job.attributes["inferd.job_id"] == job_id
    assert [s.name for s in children(spans, job)] == ["job queued", "inference ok:1"]
    inference = one(spans, "inference ok:1")
    assert [s.name for s in children(spans, inference)] == STAGES


def test_log_lines_inside_a_span_carry_its_ids(api: TracedAPI) -> None:
    tracing = Tracing(processor=SimpleSpanProcessor(InMemorySpanExporter()))
    assert log_context() == {}
    with tracing.tracer.start_as_current_span("work") as span:
        ids = log_context()
    assert ids == {
        "trace_id": f"{span.get_span_context().trace_id:032x}",
        "span_id": f"{span.get_span_context().span_id:016x}",
    }


def test_tracing_is_on_when_the_otel_variables_name_an_endpoint(tmp_path: Path) -> None:
    assert otel_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert otel_requested({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"})
    assert not otel_requested({})
    assert not otel_requested({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"})
    assert not otel_requested(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_TRACES_EXPORTER": "none"}
    )
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    assert load_settings(environ=on).tracing is True
    assert load_settings(environ={**on, "INFERD_TRACING": "false"}).tracing is False
    assert load_settings(environ={"INFERD_TRACING": "true"}).tracing is True


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver: keeps every ExportTraceServiceRequest POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.paths.append(self.path)
                message = ExportTraceServiceRequest()
                message.ParseFromString(body)
                receiver.requests.append(message)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    def span_names(self, trace_id: str) -> list[str]:
        return [
            span.name
            for request in self.requests
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
            if span.trace_id.hex() == trace_id
        ]

    def service_names(self) -> set[str]:
        return {
            attribute.value.string_value
            for request in self.requests
            for resource in request.resource_spans
            for attribute in resource.resource.attributes
            if attribute.key == "service.name"
        }


@pytest.mark.slow
def test_a_real_server_exports_its_spans_over_otlp_http(tmp_path: Path) -> None:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        env = {
            "INFERD_API_KEYS": API_KEYS,
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
            "OTEL_SERVICE_NAME": "inferd-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
        with running_server(tmp_path, env=env) as server:
            client = server.client(PREDICT_KEY)
            response = client.post(
                "/v1/models/ok/predict", json={"input": 1}, headers={"traceparent": TRACEPARENT}
            )
            assert response.status_code == 200
            assert response.headers["traceparent"].split("-")[1] == TRACE_ID
            deadline = time.monotonic() + 20
            while "postprocess" not in receiver.span_names(TRACE_ID) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.client(ADMIN_KEY).get("/livez").status_code == 200
    finally:
        receiver.shutdown()
        receiver.server_close()
    names = receiver.span_names(TRACE_ID)
    assert {"POST /v1/models/ok/predict", "inference ok:1", *STAGES} <= set(names), names
    assert set(receiver.paths) == {"/v1/traces"}
    assert receiver.service_names() == {"inferd-test"}
    logs = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert all("level" in entry for entry in logs)
