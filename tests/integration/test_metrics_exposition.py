"""GET /metrics of one process: format negotiation, gzip, the process and GC collectors, and
job_queue_depth at 0 for every loaded version before any job exists."""

from __future__ import annotations

from inferd_http_testkit import InProcessAPI
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families


def test_text_format_by_default_with_process_and_gc_collectors(api: InProcessAPI) -> None:
    response = api.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "content-encoding" not in response.headers
    names = {family.name for family in text_string_to_metric_families(response.text)}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_gc_collections"} <= names


def test_openmetrics_when_the_scraper_asks_for_it(api: InProcessAPI) -> None:
    response = api.get(
        "/metrics", headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"}
    )
    assert response.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert response.text.endswith("# EOF\n")
    families = {family.name: family.type for family in parse_openmetrics(response.text)}
    assert families["inference_requests"] == "counter"
    assert families["inference_latency_seconds"] == "histogram"


def test_gzip_when_accepted(api: InProcessAPI) -> None:
    response = api.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    # httpx inflated the body: it was valid gzip of the exposition.
    assert any(f.name == "executor_inflight" for f in text_string_to_metric_families(response.text))


def test_job_queue_depth_is_zero_for_every_loaded_version(api: InProcessAPI) -> None:
    text = api.get("/metrics").text
    depth = {
        (sample.labels["model"], sample.labels["version"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "job_queue_depth"
        for sample in family.samples
    }
    loaded = {
        (sample.labels["model"], sample.labels["version"])
        for family in text_string_to_metric_families(text)
        if family.name == "model_loaded"
        for sample in family.samples
        if sample.value == 1
    }
    assert loaded and set(depth) >= loaded
    assert all(depth[key] == 0 for key in loaded)
