"""``inferd serve --workers 2``: real processes behind one port, one set of metrics.

One server for the module. Each request goes on a new connection so the kernel spreads them over the
processes; the ``X-Request-ID`` prefix (random per process) tells which process answered a request or a
scrape. The last test stops the server with SIGTERM.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from inferd_http_testkit import FIXTURES, PREDICT_KEY, ServerProcess, bearer, running_server
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

MODELS = FIXTURES / "process_models"
REQUESTS = 40
SCRAPES = 12
WAIT_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("workers")
    with running_server(workdir, models=MODELS, args=("--workers", "2")) as process:
        yield process


def children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return {int(child) for child in handle.read().split()}


def answering_process(response: httpx.Response) -> str:
    return response.headers["x-request-id"][:12]


def predict_on_new_connections(server: ServerProcess, count: int) -> set[str]:
    processes = set()
    for number in range(count):
        with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
            response = client.post(
                "/v1/models/ok/predict", json={"input": number}, headers=bearer(PREDICT_KEY)
            )
        assert response.status_code == 200, response.text
        processes.add(answering_process(response))
    return processes


def scrape(
    server: ServerProcess, headers: dict[str, str] | None = None
) -> tuple[str, dict[tuple[str, tuple], float]]:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        response = client.get("/metrics", headers=headers or {})
    assert response.status_code == 200, response.text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    return answering_process(response), samples


def requests_counted(samples: dict[tuple[str, tuple], float]) -> float:
    return samples[("inference_requests_total", (("model", "ok"), ("tenant", "acme"), ("version", "1")))]


def test_requests_are_counted_once_whichever_process_answers(server: ServerProcess) -> None:
    assert len(children(server.process.pid)) == 2
    assert len(predict_on_new_connections(server, REQUESTS)) == 2, (
        "the kernel spread no request to one process"
    )
    answered_scrapes = set()
    for _ in range(SCRAPES):
        process, samples = scrape(server)
        answered_scrapes.add(process)
        assert requests_counted(samples) == REQUESTS
        # Gauges: executor series for every device, summed over live processes; the queue depth is
        # the store's count (0), not one reading per process.
        for device in ("cpu", "gpu"):
            assert samples[("executor_inflight", (("device", device),))] == 0
            assert samples[("executor_timeouts_total", (("device", device),))] == 0
        assert samples[("job_queue_depth", (("model", "ok"), ("version", "1")))] == 0
        assert samples[("model_loaded", (("model", "ok"), ("version", "1")))] == 1
        # Process figures of both live processes, one series each.
        assert len([key for key in samples if key[0] == "process_resident_memory_bytes"]) == 2
    assert len(answered_scrapes) == 2, "every scrape was answered by the same process"


def test_server_processes_run_every_thread_under_batch_scheduling(server: ServerProcess) -> None:
    """SCHED_BATCH: an executor thread the event loop wakes does not take the core from it."""
    threads = [
        (pid, int(thread))
        for pid in children(server.process.pid)
        for thread in os.listdir(f"/proc/{pid}/task")
    ]
    assert len(threads) > 2
    assert {os.sched_getscheduler(thread) for _, thread in threads} == {os.SCHED_BATCH}
    assert os.sched_getscheduler(server.process.pid) == os.SCHED_OTHER  # the supervisor keeps its own


def test_metrics_negotiate_openmetrics_and_gzip(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
        response = client.get(
            "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0", "Accept-Encoding": "gzip"},
        )
        raw = client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.headers["content-encoding"] == "gzip"
    assert response.text.endswith("# EOF\n")
    names = {family.name for family in parse_openmetrics(response.text)}
    assert {"inference_requests", "executor_inflight", "job_queue_depth"} <= names
    assert raw.headers["content-type"].startswith("text/plain")
    assert raw.headers["content-encoding"] == "gzip"
    assert any(f.name == "inference_requests" for f in text_string_to_metric_families(raw.text))


def test_a_killed_process_is_replaced_and_its_counts_remain(server: ServerProcess) -> None:
    before = children(server.process.pid)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    restarts: float = 0
    while time.monotonic() < deadline:
        current = children(server.process.pid)
        if len(current) == 2 and victim not in current:
            _, samples = scrape(server)
            restarts = samples[("server_process_restarts_total", (("reason", "killed"),))]
            if restarts == 1:
                break
        time.sleep(0.05)
    assert restarts == 1, server.output()
    assert "was killed by SIGKILL; starting a replacement" in server.output()
    wait_until_ready(server, len(before))
    _, samples = scrape(server)
    assert requests_counted(samples) == REQUESTS  # the dead process's counts stay in the totals
    assert len([key for key in samples if key[0] == "process_resident_memory_bytes"]) == 2  # live ones only
    assert len(predict_on_new_connections(server, REQUESTS)) == 2
    for _ in range(4):
        _, samples = scrape(server)
        assert requests_counted(samples) == 2 * REQUESTS


def wait_until_ready(server: ServerProcess, processes: int) -> None:
    """Until a run of new connections reaches every process (the replacement loads its models first)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        seen = set()
        for _ in range(16):
            with httpx.Client(base_url=server.base_url, timeout=30.0) as client:
                response = client.get("/readyz")
            if response.status_code == 200:
                seen.add(answering_process(response))
        if len(seen) == processes:
            return
    pytest.fail(f"not every process answered /readyz:\n{server.output()}")


def test_sigterm_drains_every_process_and_exits_0(server: ServerProcess, tmp_path: Path) -> None:
    outcome: dict[str, httpx.Response] = {}

    def call() -> None:
        with httpx.Client(base_url=server.base_url, timeout=60.0) as client:
            outcome["response"] = client.post(
                "/v1/models/gate/predict", json={"input": {"dir": str(tmp_path)}}, headers=bearer(PREDICT_KEY)
            )

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + WAIT_S
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (tmp_path / "started").exists(), server.output()
    processes = children(server.process.pid)
    server.process.send_signal(signal.SIGTERM)
    # Both processes got the stop while the call is held (uvicorn says so once per process)...
    deadline = time.monotonic() + WAIT_S
    while server.output().count("Shutting down") < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.output().count("Shutting down") == 2, server.output()
    assert server.process.poll() is None
    (tmp_path / "release").touch()
    caller.join(timeout=WAIT_S)
    # ...and the call in flight completes before they stop.
    assert outcome["response"].status_code == 200, outcome["response"].text
    assert outcome["response"].json()["output"] == "released"
    assert server.process.wait(timeout=WAIT_S) == 0, server.output()
    assert not [pid for pid in processes if Path(f"/proc/{pid}").exists()]  # reaped by the supervisor
