"""inferd's multiprocess value class writes files prometheus_client's MultiProcessCollector merges exactly
as it merges the library's own (the class behind ``serve --workers N``'s metrics)."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

from inferd.metrics import multiprocess_value_class


def merged(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def record(value_class: type, pid_label: str) -> None:
    """The same updates through ``value_class``: metrics of each type and gauge mode the server uses.
    (A labelled metric makes each child's values when the child is first asked for.)"""
    registry = CollectorRegistry()
    previous = values.ValueClass
    values.ValueClass = value_class
    try:
        requests = Counter("requests", "r", ["model"], registry=registry)
        latency = Histogram("latency_seconds", "l", ["model"], buckets=(0.01, 0.1), registry=registry)
        inflight = Gauge("inflight", "i", ["device"], registry=registry, multiprocess_mode="livesum")
        depth = Gauge("depth", "d", registry=registry, multiprocess_mode="livemostrecent")
        for _ in range(3):
            requests.labels("echo").inc()
        requests.labels(f"iris-{pid_label}").inc(2.5)
        for seconds in (0.005, 0.05, 0.5, 0.05):
            latency.labels("echo").observe(seconds)
        inflight.labels("cpu").inc(4)
        inflight.labels("cpu").dec(1)
        depth.set(7)
    finally:
        values.ValueClass = previous


def test_files_merge_like_the_librarys_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    library, ours = tmp_path / "library", tmp_path / "ours"
    library.mkdir()
    ours.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(library))  # where the library's class writes
    # Two processes each (pids 11 and 12), as under --workers 2.
    for pid in (11, 12):
        record(values.MultiProcessValue(lambda pid=pid: pid), str(pid))
        record(multiprocess_value_class(ours, pid), str(pid))
    expected = merged(library)
    assert merged(ours) == expected
    assert expected[("requests_total", (("model", "echo"),))] == 6.0
    assert expected[("requests_total", (("model", "iris-12"),))] == 2.5
    assert expected[("latency_seconds_bucket", (("le", "0.1"), ("model", "echo")))] == 6.0
    assert expected[("latency_seconds_count", (("model", "echo"),))] == 8.0
    assert expected[("inflight", (("device", "cpu"),))] == 6.0
    assert expected[("depth", ())] == 7.0


def test_a_reused_pid_continues_the_files_counts(tmp_path: Path) -> None:
    """A new process that gets a dead one's pid finds its files: counts go on from them, never back to 0."""
    record(multiprocess_value_class(tmp_path, 11), "a")
    record(multiprocess_value_class(tmp_path, 11), "b")
    totals = merged(tmp_path)
    assert totals[("requests_total", (("model", "echo"),))] == 6.0
    assert totals[("requests_total", (("model", "iris-a"),))] == 2.5
    assert totals[("requests_total", (("model", "iris-b"),))] == 2.5
    assert totals[("latency_seconds_count", (("model", "echo"),))] == 8.0


def test_files_grow_past_their_first_size(tmp_path: Path) -> None:
    previous = values.ValueClass
    values.ValueClass = multiprocess_value_class(tmp_path, 11)
    try:
        counter = Counter("c", "c", ["name"], registry=CollectorRegistry())
        names = [f"model-{index:04d}-" + "x" * 100 for index in range(1000)]  # well past the first 64 KiB
        for index, name in enumerate(names):
            counter.labels(name).inc(index)
        counter.labels(names[0]).inc(5)
    finally:
        values.ValueClass = previous
    totals = merged(tmp_path)
    assert len(totals) == len(names)
    assert totals[("c_total", (("name", names[0]),))] == 5.0
    assert totals[("c_total", (("name", names[-1]),))] == 999.0
