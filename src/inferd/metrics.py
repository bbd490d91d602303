"""The Prometheus metrics of the seed spec, in a dedicated registry built per app (never global).

The six seed metrics keep their exact names, types, labels and buckets. Labelled children are cached
because ``.labels(...)`` on every request costs a measurable share of an echo call.

Under ``inferd serve --workers N`` every server process writes its values to memory-mapped files in one
directory (prometheus_client's multiprocess mode, switched on by the supervisor through
``PROMETHEUS_MULTIPROC_DIR`` in the children's environment; the files are written by
:func:`multiprocess_value_class`, read by the library) and ``/metrics`` merges the files: counters and
histograms are summed over every process that ever ran (a dead process's counts stay), gauges say per
metric how processes combine (``multiprocess_mode`` below).
"""

from __future__ import annotations

import glob
import gzip
import mmap
import os
import re
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from inferd.core.runtime import ModelProcessRestart

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)
QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
OTHER = "__other__"


class RestartReason(StrEnum):
    """Why the supervisor of ``serve --workers N`` replaced a server process."""

    EXITED = "exited"  # it exited on its own (a crash in native code exits too)
    KILLED = "killed"  # a signal ended it (SIGKILL from the OOM killer or an operator, SIGSEGV)


class InferdMetrics:
    def __init__(self, *, devices: Mapping[str, int], registry: CollectorRegistry | None = None) -> None:
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
            multiprocess_mode="livesum",
        )
        self.executor_timeouts = Counter(
            "executor_timeouts_total",
            "Model calls that passed the model's own timeout_s on the device (a request's shorter timeout_s "
            "expiring is not counted here: it is the client's deadline, not a slow model).",
            ["device"],
            registry=r,
        )
        self.job_queue_depth = Gauge(
            "job_queue_depth",
            "Jobs in pending state in the job store, waiting for a worker.",
            ["model", "version"],
            registry=r,
            # Every process reads the same store: the newest reading, never a sum over processes.
            multiprocess_mode="livemostrecent",
        )
        # Beyond the seed.
        self.executor_threads = Gauge(
            "executor_threads",
            "Threads of the device's executor: executor_inflight at this value means every thread is busy.",
            ["device"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.executor_queued = Gauge(
            "executor_queued",
            "Requests waiting for a thread of the device.",
            ["device"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.executor_shed = Counter(
            "executor_shed_total",
            "Requests answered overloaded (503) without running: reason queue_full or deadline (refused on "
            "arrival), expired (dropped from the queue unrun: it could no longer finish in time), shutdown.",
            ["device", "reason"],
            registry=r,
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
            "model_loaded",
            "1 when a model version is loaded and serving (in every server process).",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.server_restarts = Counter(
            "server_process_restarts_total",
            "Server processes of serve --workers N that died and were replaced by the supervisor.",
            ["reason"],
            registry=r,
        )
        self.rate_limit_shared = Gauge(
            "rate_limit_shared",
            "1 while tenant rate limits are shared through Redis (INFERD_REDIS_URL); 0 while they are not "
            "(no Redis configured, or it does not answer and each process enforces its share).",
            registry=r,
            multiprocess_mode="livemin",
        )
        for reason in RestartReason:
            self.server_restarts.labels(reason.value)
        self.executor_restarts = Counter(
            "executor_restarts_total",
            "Model processes (isolation: process) replaced: stopped past a deadline (timeout), exited or "
            "killed on their own (exited), or over max_memory_mb (memory).",
            ["device", "reason"],
            registry=r,
        )
        # The process and GC collectors describe the process that answers; under --workers N
        # MetricsExposition replaces them with the live processes' figures.
        ProcessCollector(registry=r)
        GCCollector(registry=r)
        for device, threads in devices.items():
            self.executor_threads.labels(device).set(threads)
            self.executor_inflight.labels(device)
            self.executor_timeouts.labels(device)
            self.executor_queued.labels(device)
            for process_restart in ModelProcessRestart:
                self.executor_restarts.labels(device, process_restart.value)
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


# Longer names a client sends for unknown models are never label values: 100 distinct 60 KB names made
# /metrics 12 MB. Real model names and versions are folder names, far shorter.
MAX_UNKNOWN_LABEL_CHARS = 64


class UnknownModelLabels:
    """Bounds label cardinality and size for names clients send for models that do not exist: the first
    ``limit`` distinct (model, version) pairs of at most ``MAX_UNKNOWN_LABEL_CHARS`` characters each keep
    their names; every other pair shares ``__other__``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[tuple[str, str]] = set()

    def labels(self, model: str, version: str) -> tuple[str, str]:
        key = (model, version)
        if key in self._seen:
            return key
        if len(model) > MAX_UNKNOWN_LABEL_CHARS or len(version) > MAX_UNKNOWN_LABEL_CHARS:
            return OTHER, OTHER
        if len(self._seen) < self._limit:
            self._seen.add(key)
            return key
        return OTHER, OTHER


class MetricsExposition:
    """What ``GET /metrics`` answers: the Prometheus text format, or OpenMetrics when the scraper asks for
    it (``Accept: application/openmetrics-text``), gzipped when it accepts gzip.

    With ``multiprocess_dir`` (``serve --workers N``) it merges every server process's files instead of
    reading this process's registry, so any process answers a scrape with the same totals."""

    def __init__(self, *, metrics: InferdMetrics, multiprocess_dir: Path | None = None) -> None:
        if multiprocess_dir is None:
            self.registry = metrics.registry
        else:
            self.registry = CollectorRegistry(auto_describe=False)
            MultiProcessCollector(self.registry, path=str(multiprocess_dir))
            self.registry.register(LiveProcessesCollector(multiprocess_dir))

    def render(self, accept: str | None, accept_encoding: str | None) -> tuple[bytes, dict[str, str]]:
        encoder, content_type = choose_encoder(accept or "")
        body = encoder(self.registry)
        headers = {"Content-Type": content_type}
        if gzip_accepted(accept_encoding or ""):
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        return body, headers


# Every live server process has this file (executor_inflight is a livesum gauge created at start-up); the
# supervisor removes a dead process's live-gauge files.
_LIVE_PROCESS_FILE = re.compile(r"gauge_livesum_(\d+)\.db$")


class LiveProcessesCollector(Collector):
    """``process_*`` (CPU, memory, open files, start time) of every live server process, labelled by
    ``pid``. Under ``--workers N`` the process answering a scrape is one of N: its own figures alone would
    jump from scrape to scrape. (The GC collector has no such form; it is left out in this mode.)"""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def live_pids(self) -> list[int]:
        pids = []
        for path in glob.glob(os.path.join(self._directory, "gauge_livesum_*.db")):
            match = _LIVE_PROCESS_FILE.search(path)
            if match:
                pids.append(int(match.group(1)))
        return sorted(pids)

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for pid in self.live_pids():
            for family in ProcessCollector(registry=None, pid=_constant(pid)).collect():
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        yield from families.values()


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


# -- multiprocess values ------------------------------------------------------------------------------

_USED = struct.Struct("i")
_VALUE = struct.Struct("d")
_VALUE_AND_TIME = struct.Struct("dd")
_INITIAL_FILE_BYTES = 1 << 16


class _ValuesFile:
    """One of this process's metric files, in the layout prometheus_client's ``MmapedDict`` documents and
    ``MultiProcessCollector`` reads: the bytes used (int32, then 4 bytes of padding), then per value its
    key's length (int32), the UTF-8 key padded with spaces to 8-byte alignment, the value and a timestamp
    (doubles). Unlike ``MmapedDict`` it gives each value its offset once, so an update is one store."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a+b")  # noqa: SIM115  (open for the process's life)
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            self._file.truncate(_INITIAL_FILE_BYTES)
            size = _INITIAL_FILE_BYTES
        self.map = mmap.mmap(self._file.fileno(), size)
        self._size = size
        self._positions: dict[str, int] = {}
        self._used = _USED.unpack_from(self.map, 0)[0]
        if self._used == 0:
            self._used = 8
            self.map[0:4] = _USED.pack(self._used)
        else:
            # A process that had this pid before wrote here (its counts are kept, as the library does).
            for key, _, _, position in MmapedDict.read_all_values_from_file(path):
                self._positions[key] = position

    def position(self, key: str) -> int:
        """The offset of ``key``'s value, added (as 0) if the file does not hold it yet."""
        position = self._positions.get(key)
        if position is not None:
            return position
        encoded = key.encode("utf-8")
        padded = encoded + b" " * (8 - (len(encoded) + 4) % 8)
        entry = _USED.pack(len(encoded)) + padded + _VALUE_AND_TIME.pack(0.0, 0.0)
        while self._used + len(entry) > self._size:
            self._size *= 2
            self._file.truncate(self._size)
            self.map = mmap.mmap(self._file.fileno(), self._size)
        self.map[self._used : self._used + len(entry)] = entry
        self._used += len(entry)
        # The collector reads up to this count: the entry is complete before it is counted.
        self.map[0:4] = _USED.pack(self._used)
        position = self._positions[key] = self._used - _VALUE_AND_TIME.size
        return position


def multiprocess_value_class(directory: Path, pid: int) -> type:
    """A value class for prometheus_client's multiprocess mode writing the same files as its own
    (``{type}[_{mode}]_{pid}.db`` in ``directory``), for a process that never forks with its metrics.

    The library's class asks the kernel for the process id on every update (to notice a fork) and
    looks each value's key up again; on echo, with a counter and a histogram per request and a few
    gauges and a histogram per executor step, that was most of the cost of multiprocess metrics."""
    files: dict[str, _ValuesFile] = {}
    lock = threading.Lock()  # executor threads update the gauges too

    class MmapValue:
        _multiprocess = True

        def __init__(
            self,
            typ: str,
            metric_name: str,
            name: str,
            labelnames: Any,
            labelvalues: Any,
            help_text: str,
            multiprocess_mode: str = "",
            **kwargs: Any,
        ) -> None:
            prefix = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
            with lock:
                file = files.get(prefix)
                if file is None:
                    file = files[prefix] = _ValuesFile(str(directory / f"{prefix}_{pid}.db"))
                self._file = file
                self._position = file.position(
                    mmap_key(metric_name, name, labelnames, labelvalues, help_text)
                )
                self._value, self._timestamp = _VALUE_AND_TIME.unpack_from(file.map, self._position)

        def inc(self, amount: float) -> None:
            with lock:
                self._value += amount
                position = self._position
                self._file.map[position : position + 8] = _VALUE.pack(self._value)
                if self._timestamp:
                    self._timestamp = 0.0
                    self._file.map[position + 8 : position + 16] = _VALUE.pack(0.0)

        def set(self, value: float, timestamp: float | None = None) -> None:
            with lock:
                self._value = value
                self._timestamp = timestamp or 0.0
                position = self._position
                self._file.map[position : position + 16] = _VALUE_AND_TIME.pack(value, self._timestamp)

        def set_exemplar(self, exemplar: Any) -> None:
            return  # prometheus_client keeps no exemplars in multiprocess mode either

        def get(self) -> float:
            with lock:
                return self._value

        def get_exemplar(self) -> None:
            return None

    return MmapValue


def use_multiprocess_values() -> None:
    """In prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, which the library reads
    when first imported), make this process's metrics use :func:`multiprocess_value_class`. Call it before
    any metric exists: a metric takes its value class when created."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and values.ValueClass is not values.MutexValue:
        values.ValueClass = multiprocess_value_class(Path(directory), os.getpid())
