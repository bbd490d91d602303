"""The six seed metrics (shared/spec/seed-prometheus-metrics.txt, API.md) on a real ``inferd serve``.

One server runs a scripted mix of calls on three tenants; the /metrics text is then checked exactly:
names, types, label sets, values, histogram buckets, the executor series from start-up, the bound on
unknown-model labels, and that 401/429/parse errors are not inference requests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from inferd_http_testkit import ServerProcess, running_server
from prometheus_client.parser import text_string_to_metric_families

KEYS = {"acme": "ka-0b1e2c", "beta": "kb-4d5f6a", "limited": "kl-7a8b9c"}
BUCKETS = [0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, float("inf")]
SEED_TYPES = {
    "inference_requests_total": "counter",
    "inference_errors_total": "counter",
    "inference_latency_seconds": "histogram",
    "executor_inflight": "gauge",
    "executor_timeouts_total": "counter",
    "job_queue_depth": "gauge",
}
OTHER = "__other__"


@dataclass
class Scrape:
    text: str
    samples: list[Any]
    family_types: dict[str, str]

    def values(self, name: str, *label_names: str) -> dict[tuple[str, ...], float]:
        found: dict[tuple[str, ...], float] = {}
        for sample in self.samples:
            if sample.name == name:
                key = tuple(sample.labels[label] for label in label_names)
                assert key not in found, f"duplicate series {name}{sample.labels}"
                found[key] = sample.value
        return found

    def label_names(self, name: str) -> set[frozenset[str]]:
        return {frozenset(s.labels) for s in self.samples if s.name == name}

    def type_lines(self) -> dict[str, str]:
        types = {}
        for line in self.text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(" ", 3)
                types[name] = kind
        return types


def scrape(client: httpx.Client) -> Scrape:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families = list(text_string_to_metric_families(response.text))
    samples = [sample for family in families for sample in family.samples]
    return Scrape(response.text, samples, {family.name: family.type for family in families})


@dataclass
class Observed:
    startup: Scrape
    final: Scrape
    statuses: dict[str, list[int]]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    workdir = tmp_path_factory.mktemp("metrics-server")
    config = workdir / "inferd.yaml"
    config.write_text("tenants:\n  limited:\n    rate_limit: 1/m\n")
    env = {
        "INFERD_API_KEYS": ";".join(f"{key}:{tenant}:predict" for tenant, key in KEYS.items()),
        "INFERD_DEVICES": "cpu=4,gpu=1",
        "INFERD_UNKNOWN_MODEL_LABELS": "3",
    }
    with running_server(workdir, env=env, args=["--config", str(config)]) as server:
        yield run_mix(server, workdir)


def run_mix(server: ServerProcess, workdir: Path) -> Observed:
    client = server.client()
    startup = scrape(client)  # before any inference request
    statuses: dict[str, list[int]] = {}

    def call(label: str, tenant: str | None, path: str, **kwargs: Any) -> None:
        headers = {"Authorization": f"Bearer {KEYS[tenant]}"} if tenant else {}
        headers.update(kwargs.pop("headers", {}))
        response = client.post(path, headers=headers, **kwargs)
        statuses.setdefault(label, []).append(response.status_code)

    for _ in range(3):
        call("success", "acme", "/v1/models/ok/predict", json={"input": 1})
    for _ in range(2):
        call("success", "beta", "/v1/models/ok/predict", json={"input": 2})
    call("batch", "acme", "/v1/models/ok/predict/batch", json={"inputs": [1, 2, 3]})
    call("unknown model", "acme", "/v1/models/nope/predict", json={"input": 1})
    call("unknown version", "beta", "/v1/models/ok/versions/9/predict", json={"input": 1})
    # The label budget is 3 distinct unknown (model, version) pairs: nope, ok/9, ghost-1.
    for name in ("ghost-1", "ghost-2", "ghost-3", "ghost-2"):
        call("unknown model", "acme", f"/v1/models/{name}/predict", json={"input": 1})
    for i in range(2):
        # Blocked until released: only the model's 0.3 s deadline can answer, whatever the load.
        gate = workdir / f"sleepy-gate-{i}"
        try:
            call("timeout", "acme", "/v1/models/sleepy/predict", json={"input": {"until": str(gate)}})
        finally:
            gate.touch()
    for _ in range(2):
        call("inference error", "beta", "/v1/models/boom/predict", json={"input": 1})
    call("invalid input", "acme", "/v1/models/schema/predict", json={"input": {"x": -1}})
    call("invalid input", "acme", "/v1/models/schema/predict", json={"input": {"x": "not a number"}})
    # Not inference requests: refused before any pipeline runs.
    call("unauthenticated", None, "/v1/models/ok/predict", json={"input": 1})
    call("unauthenticated", None, "/v1/models/ok/predict", json={"input": 1}, headers={"X-API-Key": "nobody"})
    call(
        "malformed",
        "acme",
        "/v1/models/ok/predict",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    call("malformed", "beta", "/v1/models/ok/predict", json={"no_input": 1})
    call("rate limited", "limited", "/v1/models/ok/predict", json={"input": 1})
    call("rate limited", "limited", "/v1/models/ok/predict", json={"input": 1})

    # The timed-out calls keep their threads until they really return; wait for them.
    deadline = time.monotonic() + 5.0
    while True:
        final = scrape(client)
        inflight = final.values("executor_inflight", "device")
        if inflight.get(("cpu",)) == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return Observed(startup, final, statuses)


def test_the_mix_got_the_expected_statuses(observed: Observed) -> None:
    assert observed.statuses == {
        "success": [200] * 5,
        "batch": [200],
        "unknown model": [404] * 5,
        "unknown version": [404],
        "timeout": [504, 504],
        "inference error": [500, 500],
        "invalid input": [422, 422],
        "unauthenticated": [401, 401],
        "malformed": [422, 422],
        "rate limited": [200, 429],
    }


@pytest.mark.parametrize("when", ["startup", "final"])
def test_seed_metrics_have_their_types(observed: Observed, when: str) -> None:
    result: Scrape = getattr(observed, when)
    type_lines = result.type_lines()
    for name, kind in SEED_TYPES.items():
        assert type_lines.get(name) == kind, (name, type_lines.get(name))
        family = name.removesuffix("_total") if kind == "counter" else name
        assert result.family_types.get(family) == kind, (family, result.family_types.get(family))


@pytest.mark.parametrize("when", ["startup", "final"])
def test_no_created_series(observed: Observed, when: str) -> None:
    result: Scrape = getattr(observed, when)
    assert not [s.name for s in result.samples if s.name.endswith("_created")]
    assert "_created" not in result.text


def test_executor_series_exist_from_startup(observed: Observed) -> None:
    startup = observed.startup
    assert startup.values("executor_inflight", "device") == {("cpu",): 0.0, ("gpu",): 0.0}
    assert startup.values("executor_timeouts_total", "device") == {("cpu",): 0.0, ("gpu",): 0.0}
    assert startup.label_names("executor_inflight") == {frozenset({"device"})}
    assert startup.label_names("executor_timeouts_total") == {frozenset({"device"})}
    assert startup.values("inference_requests_total", "model", "version", "tenant") == {}
    assert startup.values("inference_errors_total", "model", "version", "error_type", "tenant") == {}
    assert "# TYPE job_queue_depth gauge" in startup.text


def test_requests_total_exactly(observed: Observed) -> None:
    final = observed.final
    assert final.label_names("inference_requests_total") == {frozenset({"model", "version", "tenant"})}
    assert final.values("inference_requests_total", "model", "version", "tenant") == {
        ("ok", "1", "acme"): 4.0,  # 3 sync + 1 batch call (a batch call is one request)
        ("ok", "1", "beta"): 2.0,
        ("ok", "1", "limited"): 1.0,  # the 429 is not a request
        ("nope", "", "acme"): 1.0,
        ("ok", "9", "beta"): 1.0,
        ("ghost-1", "", "acme"): 1.0,
        (OTHER, OTHER, "acme"): 3.0,  # ghost-2, ghost-3, ghost-2 again: over the label budget
        ("sleepy", "1", "acme"): 2.0,
        ("boom", "1", "beta"): 2.0,
        ("schema", "1", "acme"): 2.0,
    }


def test_errors_total_exactly(observed: Observed) -> None:
    final = observed.final
    assert final.label_names("inference_errors_total") == {
        frozenset({"model", "version", "error_type", "tenant"})
    }
    assert final.values("inference_errors_total", "model", "version", "error_type", "tenant") == {
        ("nope", "", "model_not_found", "acme"): 1.0,
        ("ok", "9", "model_not_found", "beta"): 1.0,
        ("ghost-1", "", "model_not_found", "acme"): 1.0,
        (OTHER, OTHER, "model_not_found", "acme"): 3.0,
        ("sleepy", "1", "timeout", "acme"): 2.0,
        ("boom", "1", "inference_error", "beta"): 2.0,
        ("schema", "1", "invalid_input", "acme"): 2.0,
    }


EXECUTED = {
    ("ok", "1", "acme"): 4,
    ("ok", "1", "beta"): 2,
    ("ok", "1", "limited"): 1,
    ("sleepy", "1", "acme"): 2,
    ("boom", "1", "beta"): 2,
    ("schema", "1", "acme"): 2,
}


def test_latency_histogram_buckets_and_counts(observed: Observed) -> None:
    final = observed.final
    assert final.label_names("inference_latency_seconds_bucket") == {
        frozenset({"model", "version", "tenant", "le"})
    }
    buckets: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for sample in final.samples:
        if sample.name == "inference_latency_seconds_bucket":
            labels = sample.labels
            key = (labels["model"], labels["version"], labels["tenant"])
            buckets.setdefault(key, []).append((float(labels["le"]), sample.value))
    assert set(buckets) == set(EXECUTED)
    counts = final.values("inference_latency_seconds_count", "model", "version", "tenant")
    sums = final.values("inference_latency_seconds_sum", "model", "version", "tenant")
    assert counts == {key: float(n) for key, n in EXECUTED.items()}
    assert set(sums) == set(EXECUTED)
    for key, series in buckets.items():
        assert [le for le, _ in series] == BUCKETS, key
        cumulative = [value for _, value in series]
        assert cumulative == sorted(cumulative), (key, series)
        assert cumulative[-1] == counts[key]
    # Timed-out calls are observed at their deadline (0.3 s): above 0.25, and the sum shows it.
    sleepy = dict(buckets[("sleepy", "1", "acme")])
    assert sleepy[0.25] == 0.0 and sleepy[float("inf")] == 2.0
    assert sums[("sleepy", "1", "acme")] >= 0.55


def test_executor_timeouts_and_inflight_after_the_mix(observed: Observed) -> None:
    final = observed.final
    assert final.values("executor_timeouts_total", "device") == {("cpu",): 2.0, ("gpu",): 0.0}
    assert final.values("executor_inflight", "device") == {("cpu",): 0.0, ("gpu",): 0.0}


def test_job_queue_depth_labels(observed: Observed) -> None:
    for sample in observed.final.samples:
        if sample.name == "job_queue_depth":
            assert set(sample.labels) == {"model", "version"}
            assert sample.value >= 0
