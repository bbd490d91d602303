"""DeviceExecutor: deadlines, stuck threads, bounded queue, merging of queued requests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from runtime_helpers import FakeRuntime

from inferd.core.errors import InferenceError, InferenceTimeoutError, InvalidInputError, OverloadedError
from inferd.core.executor import DeviceExecutor
from inferd.core.pipeline import Pipeline, PipelineCall

STUCK_LIMIT_S = 5.0  # a stuck model gives up after this, so a failing test cannot hang the suite


class Gate(FakeRuntime):
    """A model whose calls block until the test opens the gate."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.returned = threading.Event()
        self.calls = 0

    def predict(self, batch: list[Any], parameters: Any = None) -> list[Any]:
        self.calls += 1
        self.entered.set()
        self.opened.wait(STUCK_LIMIT_S)
        self.returned.set()
        return list(batch)


class Recorder(FakeRuntime):
    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[Any]] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()
        self._delay_s = delay_s

    def predict(self, batch: list[Any], parameters: Any = None) -> list[Any]:
        with self._lock:
            self.batches.append(list(batch))
            self.threads.add(threading.current_thread().name)
        if self._delay_s:
            time.sleep(self._delay_s)
        return [("out", item) for item in batch]


def pipeline(model: Any, max_batch_size: int = 1, **hooks: Any) -> Pipeline:
    return Pipeline(name="m", version="1", model=model, max_batch_size=max_batch_size, **hooks)


def executor(metrics: Any, *, threads: int = 1, queue_limit: int = 16, device: str = "cpu") -> DeviceExecutor:
    return DeviceExecutor(device=device, threads=threads, queue_limit=queue_limit, metrics=metrics)


def submit(ex: DeviceExecutor, target: Pipeline, items: list[Any], timeout_s: float = 2.0) -> Any:
    return ex.submit(target, PipelineCall(items, False), size=len(items), timeout_s=timeout_s)


def test_results_come_back(fake_metrics: Any) -> None:
    async def main() -> Any:
        ex = executor(fake_metrics)
        try:
            return await submit(ex, pipeline(Recorder()), ["a", "b"])
        finally:
            ex.close()

    assert asyncio.run(main()) == [("out", "a"), ("out", "b")]
    assert fake_metrics.inflight == 0
    assert fake_metrics.queued == 0
    assert fake_metrics.timeouts == 0


def test_timeout_answers_promptly_and_keeps_the_stuck_thread_counted(
    fake_metrics: Any, waiter: Callable[..., bool]
) -> None:
    gate = Gate()

    async def main() -> tuple[float, int]:
        ex = executor(fake_metrics)
        started = time.monotonic()
        try:
            with pytest.raises(InferenceTimeoutError) as info:
                await submit(ex, pipeline(gate), ["x"], timeout_s=0.2)
            elapsed = time.monotonic() - started
            assert info.value.code == "timeout"
            assert "0.2s" in info.value.message
            # The model is still running: the thread is busy and counted.
            await asyncio.sleep(0.1)
            assert not gate.returned.is_set()
            return elapsed, fake_metrics.inflight
        finally:
            ex.close()
            gate.opened.set()

    elapsed, inflight_after_timeout = asyncio.run(main())
    assert 0.15 <= elapsed < 1.0, elapsed
    assert inflight_after_timeout == 1
    assert fake_metrics.timeouts == 1
    assert waiter(lambda: fake_metrics.inflight == 0)
    assert gate.returned.is_set()
    assert fake_metrics.timeouts == 1  # the late return is not a second timeout


def test_stuck_thread_slot_is_not_reused(fake_metrics: Any) -> None:
    gate = Gate()
    quick = Recorder()

    async def main() -> None:
        ex = executor(fake_metrics, threads=1, queue_limit=4)
        try:
            stuck = submit(ex, pipeline(gate), ["stuck"], timeout_s=0.2)
            await asyncio.to_thread(gate.entered.wait, 2.0)
            assert gate.entered.is_set()
            # The only thread is inside the stuck call; a second request waits for it and is dropped unrun
            # when its deadline passes: overloaded (it never started), not a timeout.
            second = submit(ex, pipeline(quick), ["second"], timeout_s=0.3)
            with pytest.raises(InferenceTimeoutError):
                await stuck
            started = time.monotonic()
            with pytest.raises(OverloadedError):
                await second
            assert time.monotonic() - started < 1.0
            assert quick.batches == []  # it never ran
            assert fake_metrics.timeouts == 1
            assert fake_metrics.sheds == ["expired"]
            assert fake_metrics.inflight == 1
        finally:
            gate.opened.set()
            ex.close()

    asyncio.run(main())


def test_queue_full_is_overloaded(fake_metrics: Any) -> None:
    gate = Gate()

    async def main() -> None:
        ex = executor(fake_metrics, threads=1, queue_limit=2)
        target = pipeline(gate)
        try:
            running = submit(ex, target, ["running"], timeout_s=0.5)
            await asyncio.to_thread(gate.entered.wait, 2.0)
            queued = [submit(ex, target, [f"queued {i}"], timeout_s=0.5) for i in range(2)]
            with pytest.raises(OverloadedError) as info:
                submit(ex, target, ["one too many"], timeout_s=0.5)
            assert info.value.code == "overloaded"
            assert info.value.retry_after_s > 0
            assert "queue is full" in info.value.message
            with pytest.raises(InferenceTimeoutError):
                await running
            for future in queued:  # never started: dropped unrun, and their places are free again
                with pytest.raises(OverloadedError):
                    await future
            assert fake_metrics.sheds == ["queue_full", "expired", "expired"]
            assert ex.submit(target, PipelineCall(["fits again"], False), size=1, timeout_s=0.5) is not None
        finally:
            gate.opened.set()
            ex.close()

    asyncio.run(main())


def test_queue_limit_counts_requests_submitted_in_the_same_iteration(fake_metrics: Any) -> None:
    async def main() -> None:
        ex = executor(fake_metrics, queue_limit=3)
        target = pipeline(Recorder())
        try:
            futures = [submit(ex, target, [i]) for i in range(3)]
            with pytest.raises(OverloadedError):
                submit(ex, target, [3])
            assert [await f for f in futures] == [[("out", i)] for i in range(3)]
        finally:
            ex.close()

    asyncio.run(main())


def test_closed_executor_refuses_work(fake_metrics: Any) -> None:
    async def main() -> None:
        ex = executor(fake_metrics)
        ex.close()
        with pytest.raises(OverloadedError):
            submit(ex, pipeline(Recorder()), ["x"])

    asyncio.run(main())


@pytest.mark.parametrize(
    ("max_batch_size", "request_sizes"), [(4, [1] * 10), (5, [2, 2, 1, 3, 1, 2, 2]), (3, [1] * 7)]
)
def test_requests_submitted_together_are_merged_up_to_max_batch_size(
    fake_metrics: Any, max_batch_size: int, request_sizes: list[int]
) -> None:
    model = Recorder()

    async def main() -> list[Any]:
        ex = executor(fake_metrics, threads=1, queue_limit=64)
        target = pipeline(model, max_batch_size=max_batch_size)
        try:
            futures = []
            counter = 0
            for size in request_sizes:
                futures.append(submit(ex, target, list(range(counter, counter + size))))
                counter += size
            return list(await asyncio.gather(*futures))
        finally:
            ex.close()

    results = asyncio.run(main())
    counter = 0
    for size, result in zip(request_sizes, results, strict=True):
        assert result == [("out", i) for i in range(counter, counter + size)]
        counter += size
    assert all(len(batch) <= max_batch_size for batch in model.batches), model.batches
    assert len(model.batches) < len(request_sizes)  # requests were merged into shared calls
    assert all(items <= max_batch_size for items in fake_metrics.steps), fake_metrics.steps
    assert sorted(item for batch in model.batches for item in batch) == list(range(counter))


def test_an_oversized_request_runs_alone_in_chunks(fake_metrics: Any) -> None:
    model = Recorder()

    async def main() -> Any:
        ex = executor(fake_metrics)
        try:
            return await submit(ex, pipeline(model, max_batch_size=2), list(range(5)))
        finally:
            ex.close()

    assert asyncio.run(main()) == [("out", i) for i in range(5)]
    assert [len(batch) for batch in model.batches] == [2, 2, 1]


def test_rejected_request_fails_alone_in_a_merged_group(fake_metrics: Any) -> None:
    def validator(item: Any) -> None:
        if item == "bad":
            raise ValueError("bad")

    model = Recorder()

    async def main() -> list[Any]:
        ex = executor(fake_metrics)
        target = pipeline(model, max_batch_size=8, validator=validator)
        try:
            futures = [submit(ex, target, [item]) for item in ("a", "bad", "c")]
            return list(await asyncio.gather(*futures, return_exceptions=True))
        finally:
            ex.close()

    a, bad, c = asyncio.run(main())
    assert a == [("out", "a")]
    assert isinstance(bad, InvalidInputError)
    assert c == [("out", "c")]
    assert model.batches == [["a", "c"]]


def test_different_pipelines_are_never_mixed_in_one_call(fake_metrics: Any) -> None:
    first, second = Recorder(), Recorder()

    async def main() -> list[Any]:
        ex = executor(fake_metrics)
        p1, p2 = pipeline(first, max_batch_size=8), pipeline(second, max_batch_size=8)
        try:
            futures = [submit(ex, p1 if i % 2 else p2, [i]) for i in range(6)]
            return list(await asyncio.gather(*futures))
        finally:
            ex.close()

    results = asyncio.run(main())
    assert results == [[("out", i)] for i in range(6)]
    assert sorted(i for b in first.batches for i in b) == [1, 3, 5]
    assert sorted(i for b in second.batches for i in b) == [0, 2, 4]


def test_requests_queued_together_use_every_idle_thread(fake_metrics: Any) -> None:
    # max_batch_size 1: four requests submitted at once must run on four threads in parallel, not
    # one after the other on the single thread the flush woke.
    model = Recorder(delay_s=0.3)

    async def main() -> float:
        ex = executor(fake_metrics, threads=4)
        target = pipeline(model, max_batch_size=1)
        try:
            await asyncio.sleep(0.05)  # let every worker reach its idle wait
            started = time.monotonic()
            results = await asyncio.gather(*(submit(ex, target, [i]) for i in range(4)))
            assert list(results) == [[("out", i)] for i in range(4)]
            return time.monotonic() - started
        finally:
            ex.close()

    elapsed = asyncio.run(main())
    assert elapsed < 0.8, elapsed  # serially it would take 1.2 s
    assert len(model.threads) == 4
    assert fake_metrics.max_inflight == 4


def test_unexpected_exception_in_the_target_does_not_kill_the_thread(fake_metrics: Any) -> None:
    class Buggy:
        max_batch_size = 1

        def __init__(self) -> None:
            self.calls = 0

        def run_group(self, calls: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("bug in the wrapper")
            return [["fine"] for _ in calls]

    async def main() -> Any:
        ex = executor(fake_metrics, threads=1)
        buggy = Buggy()
        try:
            with pytest.raises(InferenceError) as info:
                await ex.submit(buggy, "call", size=1, timeout_s=1.0)
            assert "RuntimeError" in info.value.message
            return await ex.submit(buggy, "call", size=1, timeout_s=1.0)
        finally:
            ex.close()

    assert asyncio.run(main()) == ["fine"]
    assert fake_metrics.inflight == 0


def test_metrics_accounting_balances(fake_metrics: Any) -> None:
    async def main() -> None:
        ex = executor(fake_metrics, threads=2)
        target = pipeline(Recorder(), max_batch_size=3)
        try:
            await asyncio.gather(*(submit(ex, target, [i]) for i in range(10)))
        finally:
            ex.close()

    asyncio.run(main())
    queued_in = sum(n for kind, n in fake_metrics.calls if kind == "queued" and n > 0)
    assert queued_in == 10
    assert fake_metrics.queued == 0
    assert fake_metrics.inflight == 0
    assert fake_metrics.max_inflight >= 1
