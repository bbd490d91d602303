"""``isolation: process``: the model call runs in child processes that can be killed and replaced.

One in-process server (real model processes) for the module: a call past its deadline is answered 504
and its process is stopped and replaced; a process that crashes fails only its call; max_memory_mb
turns an oversized allocation into a clear error; arrays travel through shared memory. And the runtime
alone: a stopped process's slot goes to the spare loaded beforehand.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from inferd_http_testkit import FIXTURES, PREDICT_KEY, InProcessAPI, assert_error, in_process_api
from prometheus_client.parser import text_string_to_metric_families

from inferd.core.errors import InferenceError
from inferd.core.model_spec import read_model_spec
from inferd.runtimes.factory import PipelineFactory
from inferd.runtimes.isolation import Inbox, Outbox, ProcessRuntime

pytestmark = pytest.mark.slow

WAIT_S = 60.0


@pytest.fixture(scope="module")
def api() -> Iterator[InProcessAPI]:
    with in_process_api(models=FIXTURES / "isolation_models", devices="cpu=2") as instance:
        yield instance


def predict(api: InProcessAPI, model: str, item: Any) -> Any:
    return api.post(f"/v1/models/{model}/predict", json={"input": item}, key=PREDICT_KEY)


def restarts(api: InProcessAPI, reason: str) -> float:
    for family in text_string_to_metric_families(api.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "executor_restarts_total" and sample.labels == {
                "device": "cpu",
                "reason": reason,
            }:
                return sample.value
    raise AssertionError("executor_restarts_total has no series for cpu")


def until_ok(api: InProcessAPI, model: str, item: Any) -> Any:
    """The version keeps serving: a call succeeds once the replacement process has loaded the model."""
    deadline = time.monotonic() + WAIT_S
    while True:
        response = predict(api, model, item)
        # 504/500 while the replacement loads; anything else is an answer to report now.
        if response.status_code not in (500, 504) or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            return response.json()["output"]


def test_a_call_past_its_deadline_is_answered_at_once_and_its_process_replaced(api: InProcessAPI) -> None:
    first = until_ok(api, "stuck", {"sleep_s": 0})
    before = restarts(api, "timeout")
    # Both slots stuck for far longer than the deadline: each call gets its 504, neither holds its slot.
    responses = api.gather(
        *(
            api.arequest("POST", "/v1/models/stuck/predict", json={"input": {"sleep_s": 60}}, key=PREDICT_KEY)
            for _ in range(2)
        )
    )
    for response in responses:
        assert_error(response, 504, "timeout")
    assert until_ok(api, "stuck", {"sleep_s": 0}) != first  # a fresh process answers
    assert restarts(api, "timeout") >= before + 1


def test_a_crashing_model_process_fails_only_its_call(api: InProcessAPI) -> None:
    until_ok(api, "crashy", "warm")
    before = restarts(api, "exited")
    body = assert_error(predict(api, "crashy", "segv"), 500, "inference_error")
    assert "the model process was killed by SIGSEGV" in body["error"]["message"]
    until_ok(api, "crashy", "after")
    body = assert_error(predict(api, "crashy", "exit"), 500, "inference_error")
    assert "the model process exited with status 3" in body["error"]["message"]
    assert until_ok(api, "crashy", "again")["item"] == "again"
    assert restarts(api, "exited") == before + 2
    # An exception in the model is an ordinary model failure: no process is replaced.
    body = assert_error(predict(api, "crashy", "raise"), 500, "inference_error")
    assert "ValueError" in body["error"]["message"]
    assert restarts(api, "exited") == before + 2


def test_max_memory_mb_fails_the_call_with_a_clear_message(api: InProcessAPI) -> None:
    assert until_ok(api, "hog", {"mb": 10}) == 10 * 1024 * 1024
    body = assert_error(predict(api, "hog", {"mb": 4000}), 500, "inference_error")
    assert "max_memory_mb (1500 MiB)" in body["error"]["message"]
    assert until_ok(api, "hog", {"mb": 1}) == 1024 * 1024
    assert restarts(api, "memory") >= 1


def test_arrays_cross_through_shared_memory_intact() -> None:
    outbox, inbox = Outbox(), Inbox()
    try:
        for rows in (512, 256, 2048):  # 2 MiB; less, in the same area; more, in a new one
            array = np.arange(rows * 1024, dtype=np.float32).reshape(rows, 1024)
            packed = outbox.pack([array, {"small": np.ones(3)}])
            assert len(packed[0]) < 4096  # the array went out of band, not into the pickle
            assert any(isinstance(item, tuple) for item in packed[1])
            assert (packed[2] is not None) == (rows != 256)  # a new area only when the old one is too small
            back = inbox.unpack(packed)
            np.testing.assert_array_equal(back[0], array)
            np.testing.assert_array_equal(back[1]["small"], np.ones(3))
            # The reader removed the area's name once it had mapped it: nothing is left in /dev/shm.
            if packed[2] is not None:
                assert not Path("/dev/shm", packed[2][0].lstrip("/")).exists()
    finally:
        outbox.close()
        inbox.close()


def parent_pid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("PPid:")).split()[1])


@pytest.fixture
def stuck_runtime() -> Iterator[ProcessRuntime]:
    """The ``stuck`` fixture's runtime alone (no server), one slot: its model processes and spare."""
    version = FIXTURES / "isolation_models" / "stuck" / "1"
    spec = read_model_spec(version / "model.yaml")
    runtime = PipelineFactory(process_slots=lambda spec: 1).runtime("stuck", "1", version, spec)
    assert isinstance(runtime, ProcessRuntime)
    try:
        yield runtime
    finally:
        runtime.unload()


def test_a_stopped_process_hands_its_slot_to_the_loaded_spare(stuck_runtime: ProcessRuntime) -> None:
    runtime = stuck_runtime
    spare = runtime.spare_pid
    assert spare is not None
    # Model processes are forks of the version's template, not of the server nor fresh interpreters.
    assert parent_pid(spare) not in (os.getpid(), 1)
    stuck = runtime.predict([{"sleep_s": 0}], None)[0]
    assert stuck != spare
    failures: list[InferenceError] = []

    def stuck_call() -> None:
        try:
            runtime.predict([{"sleep_s": 600}], None)
        except InferenceError as exc:
            failures.append(exc)

    caller = threading.Thread(target=stuck_call)
    caller.start()
    assert caller.ident is not None
    while not runtime.cancel(caller.ident):  # until the call is in its process, then stop it
        time.sleep(0.01)
    caller.join()
    assert [failure.cause for failure in failures] == ["deadline"]
    # predict returned only once the stopped process was gone (its slot was busy until then) ...
    with pytest.raises(ProcessLookupError):
        os.kill(stuck, 0)
    # ... and the next call runs in the spare, loaded before the stop: no interpreter start, no load.
    assert runtime.predict([{"sleep_s": 0}], None) == [spare]


def test_a_spare_that_died_while_idle_is_skipped(stuck_runtime: ProcessRuntime) -> None:
    runtime = stuck_runtime
    spare = runtime.spare_pid
    assert spare is not None
    os.kill(spare, signal.SIGKILL)  # e.g. the OOM killer
    with contextlib.suppress(ProcessLookupError):
        while True:  # until its template has reaped it
            os.kill(spare, 0)
            time.sleep(0.01)
    crashed = runtime.predict([{"sleep_s": 0}], None)[0]
    os.kill(crashed, signal.SIGKILL)
    with pytest.raises(InferenceError, match="was killed by SIGKILL"):
        runtime.predict([{"sleep_s": 0}], None)
    # The slot went to a fresh fork, not to the dead spare: the next call succeeds.
    (answer,) = runtime.predict([{"sleep_s": 0}], None)
    assert answer not in (spare, crashed)
