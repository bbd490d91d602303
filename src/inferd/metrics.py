"""The Prometheus metrics of the seed spec, in a dedicated registry built per app (never global).

The six seed metrics keep their exact names, types, labels and buckets. Labelled children are cached
because ``.labels(...)`` on every request costs a measurable share of an echo call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
OTHER = "__other__"


class InferdMetrics:
    def __init__(self, *, devices: Iterable[str], registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "inference_requests_total",
            "Pipeline executions requested (sync, batch, V2 and job attempts), counted before execution.",
            ["model", "version", "tenant"],
            registry=r,
        )
        self.errors = Counter(
            "inference_errors_total",
            "Failed pipeline executions by error type.",
            ["model", "version", "error_type", "tenant"],
            registry=r,
        )
        self.latency = Histogram(
            "inference_latency_seconds",
            "End-to-end pipeline latency: preprocessor, validator, model, postprocessor (queue wait included).",
            ["model", "version", "tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.executor_inflight = Gauge(
            "executor_inflight",
            "Inference calls currently executing in the device's thread pool (stuck calls included).",
            ["device"],
            registry=r,
        )
        self.executor_timeouts = Counter(
            "executor_timeouts_total",
            "Calls that passed their timeout on the device.",
            ["device"],
            registry=r,
        )
        self.job_queue_depth = Gauge(
            "job_queue_depth",
            "Jobs in pending state in the job store, waiting for a worker.",
            ["model", "version"],
            registry=r,
        )
        # Beyond the seed.
        self.executor_queued = Gauge(
            "executor_queued", "Requests waiting for a thread of the device.", ["device"], registry=r
        )
        self.batch_items = Histogram(
            "inference_batch_items",
            "Items run in one executor step after merging concurrent requests (split into model calls of at "
            "most max_batch_size).",
            ["model", "version"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.jobs_finished = Counter(
            "jobs_finished_total",
            "Jobs that reached a terminal state.",
            ["model", "version", "status"],
            registry=r,
        )
        self.job_queue_wait = Histogram(
            "job_queue_wait_seconds",
            "Time a job waited in pending before a worker started it (each attempt).",
            ["model", "version"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.model_state = Gauge(
            "model_loaded", "1 when a model version is loaded and serving.", ["model", "version"], registry=r
        )
        for device in devices:
            self.executor_inflight.labels(device)
            self.executor_timeouts.labels(device)
            self.executor_queued.labels(device)
        self._lock = threading.Lock()
        self._request_children: dict[tuple[str, str, str], tuple[Counter, Histogram]] = {}
        self._error_children: dict[tuple[str, str, str, str], Counter] = {}

    def request_children(self, model: str, version: str, tenant: str) -> tuple[Counter, Histogram]:
        key = (model, version, tenant)
        children = self._request_children.get(key)
        if children is None:
            with self._lock:
                children = (self.requests.labels(*key), self.latency.labels(*key))
                self._request_children[key] = children
        return children

    def error_child(self, model: str, version: str, error_type: str, tenant: str) -> Counter:
        key = (model, version, error_type, tenant)
        child = self._error_children.get(key)
        if child is None:
            with self._lock:
                child = self.errors.labels(*key)
                self._error_children[key] = child
        return child


class UnknownModelLabels:
    """Bounds label cardinality for names clients send for models that do not exist."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[tuple[str, str]] = set()

    def labels(self, model: str, version: str) -> tuple[str, str]:
        key = (model, version)
        if key in self._seen:
            return key
        if len(self._seen) < self._limit:
            self._seen.add(key)
            return key
        return OTHER, OTHER
