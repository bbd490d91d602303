"""DeviceExecutor scheduling: deadline admission, drops, fairness between versions and tenants, caps,
adaptive batching. Time is a fake clock that only the test (or a controlled model) moves."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from runtime_helpers import FakeRuntime

from inferd.core.errors import InferenceError, InferenceTimeoutError, OverloadedError
from inferd.core.executor import DeviceExecutor, LanePolicy, TenantShare
from inferd.core.pipeline import Pipeline, PipelineCall

STUCK_LIMIT_S = 5.0


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds


class Model(FakeRuntime):
    """Records each call (fake time, items); the first ``hold`` calls, and calls holding an item of
    ``blocks``, wait for the gate; each call moves the fake clock by ``cost_s`` (device time the
    scheduler measures)."""

    def __init__(
        self, clock: FakeClock, *, cost_s: float = 0.0, hold: int = 0, blocks: frozenset[str] = frozenset()
    ) -> None:
        self.clock = clock
        self.cost_s = cost_s
        self.hold = hold
        self.blocks = blocks
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[tuple[float, list[Any]]] = []
        self._lock = threading.Lock()

    def predict(self, batch: list[Any], parameters: Any = None) -> list[Any]:
        with self._lock:
            self.calls.append((self.clock(), list(batch)))
            held = len(self.calls) <= self.hold or not self.blocks.isdisjoint(batch)
        if held:
            self.entered.set()
            self.gate.wait(STUCK_LIMIT_S)
        if self.cost_s:
            self.clock.advance(self.cost_s)
        return list(batch)

    @property
    def items(self) -> list[Any]:
        return [item for _, batch in self.calls for item in batch]


def pipeline(model: Any, *, name: str = "m", max_batch_size: int = 1) -> Pipeline:
    return Pipeline(name=name, version="1", model=model, max_batch_size=max_batch_size)


def make(metrics: Any, clock: FakeClock, *, threads: int = 1, **kwargs: Any) -> DeviceExecutor:
    return DeviceExecutor(
        device="cpu", threads=threads, queue_limit=256, metrics=metrics, clock=clock, **kwargs
    )


def send(
    ex: DeviceExecutor,
    target: Pipeline,
    item: Any,
    *,
    timeout_s: float = 1000.0,
    tenant: str = "t",
    policy: LanePolicy | None = None,
) -> asyncio.Future[Any]:
    return ex.submit(
        target, PipelineCall([item], False), size=1, timeout_s=timeout_s, tenant=tenant, policy=policy
    )


def test_a_request_that_cannot_make_its_deadline_is_refused_at_once(fake_metrics: Any) -> None:
    clock = FakeClock()
    model = Model(clock, hold=1)
    policy = LanePolicy(service_time_s=1.0)

    async def main() -> None:
        ex = make(fake_metrics, clock)
        target = pipeline(model)
        try:
            running = send(ex, target, "running", policy=policy)
            await asyncio.to_thread(model.entered.wait, STUCK_LIMIT_S)
            # One call runs (1 s estimated, just started): a request with 2.5 s finishes at about 2 s.
            admitted = send(ex, target, "admitted", timeout_s=2.5, policy=policy)
            # The next one would start after both (2 s) and finish at 3 s: refused now, not after waiting.
            with pytest.raises(OverloadedError) as info:
                send(ex, target, "refused", timeout_s=2.5, policy=policy)
            assert info.value.retry_after_s == pytest.approx(0.5)
            assert "2.5s deadline" in info.value.message
            assert fake_metrics.sheds == ["deadline"]
            late = send(ex, target, "more time", timeout_s=3.5, policy=policy)  # 3 s fits in 3.5 s
            model.gate.set()
            assert await running == ["running"]
            assert await admitted == ["admitted"]
            assert await late == ["more time"]
        finally:
            model.gate.set()
            ex.close()

    asyncio.run(main())
    assert model.items == ["running", "admitted", "more time"]


def test_queued_work_past_its_latest_start_is_dropped_and_never_reaches_the_model(fake_metrics: Any) -> None:
    clock = FakeClock()
    model = Model(clock, hold=1)
    policy = LanePolicy(service_time_s=1.0)

    async def main() -> None:
        ex = make(fake_metrics, clock)
        target = pipeline(model)
        try:
            running = send(ex, target, "running", policy=policy)
            await asyncio.to_thread(model.entered.wait, STUCK_LIMIT_S)
            doomed = send(ex, target, "doomed", timeout_s=2.5, policy=policy)  # latest start: 1.5 s
            await asyncio.sleep(0)  # handed over to the queue
            clock.advance(1.6)
            ex.sweep()
            with pytest.raises(OverloadedError) as info:
                await doomed  # answered now, while the thread is still busy
            assert "could not start" in info.value.message
            assert not model.gate.is_set()
            model.gate.set()
            assert await running == ["running"]
        finally:
            model.gate.set()
            ex.close()

    asyncio.run(main())
    assert model.items == ["running"]
    assert fake_metrics.sheds == ["expired"]
    assert fake_metrics.timeouts == 0
    assert fake_metrics.queued == 0


def test_a_thread_that_reaches_expired_work_drops_it_unrun(fake_metrics: Any) -> None:
    clock = FakeClock()
    model = Model(clock, hold=1)
    policy = LanePolicy(service_time_s=1.0)

    async def main() -> None:
        ex = make(fake_metrics, clock)
        target = pipeline(model)
        try:
            running = send(ex, target, "running", policy=policy)
            await asyncio.to_thread(model.entered.wait, STUCK_LIMIT_S)
            doomed = send(ex, target, "doomed", timeout_s=2.5, policy=policy)
            await asyncio.sleep(0)
            clock.advance(1.6)  # no sweep: the thread finds it when the running call returns
            model.gate.set()
            assert await running == ["running"]
            with pytest.raises(OverloadedError):
                await doomed
        finally:
            model.gate.set()
            ex.close()

    asyncio.run(main())
    assert model.items == ["running"]
    assert fake_metrics.sheds == ["expired"]


async def _drain_in_order(
    ex: DeviceExecutor, model: Model, submit_all: Callable[[], list[asyncio.Future[Any]]]
) -> None:
    """Block the only thread, queue everything in one step, then let it run in scheduling order."""
    await asyncio.to_thread(model.entered.wait, STUCK_LIMIT_S)
    futures = submit_all()
    await asyncio.sleep(0)
    model.gate.set()
    await asyncio.gather(*futures)


def test_tenant_weights_are_honoured_over_a_window(fake_metrics: Any) -> None:
    clock = FakeClock()
    model = Model(clock, hold=1)
    shares = {"gold": TenantShare(weight=3.0), "bronze": TenantShare(weight=1.0)}

    async def main() -> None:
        ex = make(fake_metrics, clock, tenants=shares)
        target = pipeline(model)
        try:
            warm = send(ex, target, ("warm", 0), tenant="gold")
            await _drain_in_order(
                ex,
                model,
                lambda: [
                    send(ex, target, (tenant, i), tenant=tenant)
                    for i in range(60)
                    for tenant in ("bronze", "gold")
                ],
            )
            await warm
        finally:
            model.gate.set()
            ex.close()

    asyncio.run(main())
    served = [tenant for tenant, _ in model.items[1:]]
    for start in range(0, 80, 40):
        window = served[start : start + 40]
        assert 29 <= window.count("gold") <= 31, window


def test_a_tenant_arriving_behind_a_backlog_is_served_at_once(fake_metrics: Any) -> None:
    clock = FakeClock()
    model = Model(clock, hold=1)

    async def main() -> None:
        ex = make(fake_metrics, clock)
        target = pipeline(model)
        try:
            warm = send(ex, target, ("warm", 0), tenant="a")

            def submit_all() -> list[asyncio.Future[Any]]:
                backlog = [send(ex, target, ("a", i), tenant="a") for i in range(40)]
                return backlog + [send(ex, target, ("b", i), tenant="b") for i in range(5)]

            await _drain_in_order(ex, model, submit_all)
            await warm
        finally:
            model.gate.set()
            ex.close()

    asyncio.run(main())
    served = [tenant for tenant, _ in model.items[1:]]
    assert served[:10].count("b") == 5, served[:10]  # equal weights: b alternates with a's backlog


def test_versions_share_the_device_by_measured_time_and_weight(fake_metrics: Any) -> None:
    clock = FakeClock()
    heavy, light = Model(clock, cost_s=1.0, hold=1), Model(clock, cost_s=1.0)

    async def main() -> None:
        ex = make(fake_metrics, clock)
        heavy_target, light_target = pipeline(heavy, name="heavy"), pipeline(light, name="light")
        heavy_policy, light_policy = LanePolicy(weight=3.0), LanePolicy(weight=1.0)
        try:
            warm = send(ex, heavy_target, "warm", policy=heavy_policy)
            await _drain_in_order(
                ex,
                heavy,
                lambda: [
                    future
                    for i in range(40)
                    for future in (
                        send(ex, heavy_target, i, policy=heavy_policy),
                        send(ex, light_target, i, policy=light_policy),
                    )
                ],
            )
            await warm
        finally:
            heavy.gate.set()
            ex.close()

    asyncio.run(main())
    calls = sorted([(t, "heavy") for t, _ in heavy.calls[1:]] + [(t, "light") for t, _ in light.calls])
    window = [name for _, name in calls[:40]]
    assert 29 <= window.count("heavy") <= 31, window


def test_a_version_cap_leaves_threads_for_other_versions(fake_metrics: Any) -> None:
    clock = FakeClock()
    slow, quick = Model(clock, hold=10), Model(clock)

    async def main() -> None:
        ex = make(fake_metrics, clock, threads=2)
        slow_target, quick_target = pipeline(slow, name="slow"), pipeline(quick, name="quick")
        capped = LanePolicy(max_concurrency=1)
        try:
            stuck = [send(ex, slow_target, i, policy=capped) for i in range(3)]
            await asyncio.to_thread(slow.entered.wait, STUCK_LIMIT_S)
            # slow holds one thread and has two requests queued; the other thread stays for quick.
            assert await send(ex, quick_target, "through") == ["through"]
            assert len(slow.calls) == 1
            slow.gate.set()
            await asyncio.gather(*stuck)
        finally:
            slow.gate.set()
            ex.close()

    asyncio.run(main())
    assert len(slow.calls) == 3


def test_tenant_max_concurrency_holds(fake_metrics: Any) -> None:
    clock = FakeClock()
    running: dict[str, int] = {}
    peak: dict[str, int] = {}
    lock = threading.Lock()
    release = threading.Event()

    class Counting(FakeRuntime):
        def predict(self, batch: list[Any], parameters: Any = None) -> list[Any]:
            tenant = batch[0][0]
            with lock:
                running[tenant] = running.get(tenant, 0) + 1
                peak[tenant] = max(peak.get(tenant, 0), running[tenant])
            release.wait(0.01)  # overlap calls a little; the assertion does not depend on timing
            with lock:
                running[tenant] -= 1
            return list(batch)

    async def main() -> None:
        ex = make(fake_metrics, clock, threads=4, tenants={"capped": TenantShare(max_concurrency=1)})
        target = pipeline(Counting())
        try:
            futures = [
                send(ex, target, (tenant, i), tenant=tenant)
                for i in range(12)
                for tenant in ("capped", "free")
            ]
            await asyncio.gather(*futures)
        finally:
            release.set()
            ex.close()

    asyncio.run(main())
    assert peak["capped"] == 1
    assert fake_metrics.inflight == 0


def test_batching_waits_for_a_preferred_size_up_to_max_delay(
    fake_metrics: Any, waiter: Callable[..., bool]
) -> None:
    clock = FakeClock()
    model = Model(clock)
    policy = LanePolicy(max_delay_s=0.05, preferred_batch_sizes=(4,))

    async def main() -> None:
        ex = make(fake_metrics, clock)
        target = pipeline(model, max_batch_size=8)
        try:
            # A preferred size is there at once: no waiting.
            first = [send(ex, target, i, policy=policy) for i in range(4)]
            await asyncio.gather(*first)
            # Fewer than a preferred size: the thread holds the lane until the oldest waited max_delay.
            second = [send(ex, target, 10, policy=policy)]
            await asyncio.sleep(0)
            assert await asyncio.to_thread(waiter, lambda: ex.collecting() == 1)
            second += [send(ex, target, i, policy=policy) for i in (11, 12)]
            await asyncio.sleep(0)
            clock.advance(0.03)
            assert model.calls == [(100.0, [0, 1, 2, 3])]
            clock.advance(0.02)
            await asyncio.gather(*second)
        finally:
            ex.close()

    asyncio.run(main())
    assert model.calls == [(100.0, [0, 1, 2, 3]), (pytest.approx(100.05), [10, 11, 12])]


def test_batching_never_holds_work_past_its_latest_start(fake_metrics: Any) -> None:
    clock = FakeClock()
    model = Model(clock)
    policy = LanePolicy(max_delay_s=5.0, service_time_s=1.0, preferred_batch_sizes=(4,))

    async def main() -> None:
        ex = make(fake_metrics, clock)
        target = pipeline(model, max_batch_size=8)
        try:
            future = send(ex, target, "x", timeout_s=1.5, policy=policy)  # latest start: 0.5 s
            await asyncio.sleep(0)
            clock.advance(0.5)
            assert await future == ["x"]
        finally:
            ex.close()

    asyncio.run(main())
    assert model.calls == [(pytest.approx(100.5), ["x"])]


class Loop:
    """Rounds of requests to a version with max_delay_s 50 ms and max_batch_size 8 (fake time)."""

    def __init__(self, fake_metrics: Any, waiter: Callable[..., bool]) -> None:
        self.clock = FakeClock()
        self.model = Model(self.clock)
        self.ex = make(fake_metrics, self.clock)
        self.target = pipeline(self.model, max_batch_size=8)
        self.policy = LanePolicy(max_delay_s=0.05)
        self.waiter = waiter

    async def round(self, *arrivals: tuple[float, str], waits: bool) -> None:
        """Each (seconds after the previous one, items) arrives in its own loop iteration, one request
        per item; ``waits``: the queue is then still waiting for a fuller batch, and the clock is
        moved to the end of its delay."""
        futures = []
        for after, items in arrivals:
            self.clock.advance(after)
            futures += [send(self.ex, self.target, item, policy=self.policy) for item in items]
            await asyncio.sleep(0)
        if waits:
            assert await asyncio.to_thread(self.waiter, lambda: self.ex.collecting() == 1)
            self.clock.advance(0.05 - sum(after for after, _ in arrivals[1:]))
        await asyncio.gather(*futures)

    def learned(self) -> int:
        return next(iter(self.ex._lanes.values())).learned


def test_batching_learns_the_batch_a_closed_loop_fills(
    fake_metrics: Any, waiter: Callable[..., bool]
) -> None:
    """Three clients, each sending again when answered: the queue never holds 8. After two waits
    that ran out with the three there early, a call starts as soon as the three are back; more
    requests at once raise what it waits for, a wait that ran out with fewer lowers it, and after a
    second the version waits the whole delay once more. The fake clock moves only where a round
    waits: a call that waited for the delay otherwise would never start."""
    loop = Loop(fake_metrics, waiter)

    async def main() -> None:
        try:
            one_by_one = ((0.0, "a"), (0.0, "b"), (0.0, "c"))
            for _ in range(2):
                await loop.round(*one_by_one, waits=True)
            await loop.round((0.001, "a"), (0.0, "b"), (0.0, "c"), waits=False)  # no delay added
            await loop.round((0.0, "abcd"), waits=False)  # four at once: a fourth client
            assert loop.learned() == 4
            await loop.round(*one_by_one, waits=True)  # three again: the whole delay, and 3 is learned
            await loop.round(*one_by_one, waits=False)
            loop.clock.advance(1.0)  # lapsed: the whole delay once, then learned again
            await loop.round(*one_by_one, waits=True)
            await loop.round(*one_by_one, waits=False)
        finally:
            loop.ex.close()

    asyncio.run(main())
    assert [(round(at - 100.0, 3), items) for at, items in loop.model.calls] == [
        (0.05, ["a", "b", "c"]),
        (0.1, ["a", "b", "c"]),
        (0.101, ["a", "b", "c"]),
        (0.101, ["a", "b", "c", "d"]),
        (0.151, ["a", "b", "c"]),
        (0.151, ["a", "b", "c"]),
        (1.201, ["a", "b", "c"]),
        (1.201, ["a", "b", "c"]),
    ]


def test_batching_learns_nothing_from_requests_arriving_through_the_delay(
    fake_metrics: Any, waiter: Callable[..., bool]
) -> None:
    """An open loop: requests keep arriving through each wait (the second 30 ms after the first,
    past half the delay), so more might come: every call waits the delay."""
    loop = Loop(fake_metrics, waiter)

    async def main() -> None:
        try:
            for _ in range(3):
                await loop.round((0.0, "a"), (0.03, "b"), waits=True)
            assert loop.learned() == 0
        finally:
            loop.ex.close()

    asyncio.run(main())
    assert [round(at - 100.0, 3) for at, _ in loop.model.calls] == [0.05, 0.1, 0.15]


def test_without_max_delay_a_lone_request_runs_at_once(fake_metrics: Any) -> None:
    clock = FakeClock()
    model = Model(clock)

    async def main() -> None:
        ex = make(fake_metrics, clock)
        try:
            assert await send(ex, pipeline(model, max_batch_size=8), "alone") == ["alone"]
        finally:
            ex.close()

    asyncio.run(main())
    assert model.calls == [(100.0, ["alone"])]


def test_queues_of_finished_parameter_groups_are_not_kept(fake_metrics: Any) -> None:
    clock = FakeClock()
    model = Model(clock)

    class Tuned(FakeRuntime):
        takes_parameters = True

        def predict(self, batch: list[Any], parameters: Any = None) -> list[Any]:
            return model.predict(batch)

    async def main() -> int:
        ex = make(fake_metrics, clock)
        target = pipeline(Tuned(), max_batch_size=8)
        try:
            futures = [
                ex.submit(target, PipelineCall([i], False, {"p": i}), size=1, timeout_s=60, group=i)
                for i in range(50)
            ]
            await asyncio.gather(*futures)
            return sum(len(lane.tenants) for lane in ex._lanes.values())
        finally:
            ex.close()

    assert asyncio.run(main()) == 0
    assert len(model.calls) == 50  # different parameters never share a call


class BusyLane:
    """A 4-thread executor, a version with max_batch_size 8 measured by one warm call, and one call
    (``blocked``) running and held at the model's gate. The fake CPU clock is the fake wall clock (a
    call on the CPU for its whole run) or stands still (a call that waits: I/O, a sleep, a process)."""

    def __init__(
        self, fake_metrics: Any, *, cpu_bound: bool, blocked: str = "running", **policy: Any
    ) -> None:
        self.clock = FakeClock()
        self.model = Model(self.clock, cost_s=0.01, blocks=frozenset({blocked}))
        cpu_clock = self.clock if cpu_bound else (lambda: 0.0)
        self.ex = make(fake_metrics, self.clock, threads=4, cpu_clock=cpu_clock)
        self.target = pipeline(self.model, max_batch_size=8)
        self.policy = LanePolicy(**policy)
        self.blocked = blocked

    def send(self, item: str, **kwargs: Any) -> asyncio.Future[Any]:
        return send(self.ex, self.target, item, policy=self.policy, **kwargs)

    async def start(self) -> asyncio.Future[Any]:
        """The warm call (estimate: 10 ms of fake time), then the blocked call, once it runs."""
        assert await self.send("warm") == ["warm"]
        running = self.send(self.blocked)
        await asyncio.to_thread(self.model.entered.wait, STUCK_LIMIT_S)
        return running

    def close(self) -> None:
        self.model.gate.set()
        self.ex.close()


def test_a_compute_bound_version_queues_behind_its_running_call_and_batches(fake_metrics: Any) -> None:
    lane = BusyLane(fake_metrics, cpu_bound=True)

    async def main() -> None:
        try:
            running = await lane.start()
            queued = [lane.send(item) for item in ("a", "b", "c")]
            await asyncio.sleep(0)  # handed over while "running" runs: three threads are idle
            lane.model.gate.set()
            assert await running == ["running"]
            assert await asyncio.gather(*queued) == [["a"], ["b"], ["c"]]
        finally:
            lane.close()

    asyncio.run(main())
    # The queue waited for the running call and went into the next call, on its return (fake time).
    assert lane.model.calls == [
        (100.0, ["warm"]),
        (pytest.approx(100.01), ["running"]),
        (pytest.approx(100.02), ["a", "b", "c"]),
    ]


@pytest.mark.parametrize(
    ("why", "options"),
    [
        ("its calls wait off the CPU", {"cpu_bound": False}),
        ("batch_while_busy is off", {"cpu_bound": True, "batch_while_busy": False}),
    ],
)
def test_calls_start_beside_a_running_call_when(fake_metrics: Any, why: str, options: Any) -> None:
    lane = BusyLane(fake_metrics, **options)

    async def main() -> None:
        try:
            running = await lane.start()
            assert await lane.send("a") == ["a"]  # served by another thread while "running" runs
            assert not running.done()
        finally:
            lane.close()

    asyncio.run(main())
    assert lane.model.calls[2] == (pytest.approx(100.01), ["a"])


def test_a_queue_stops_waiting_for_a_call_that_overran_twice_its_estimate(fake_metrics: Any) -> None:
    lane = BusyLane(fake_metrics, cpu_bound=True, blocked="stuck")

    async def main() -> None:
        try:
            stuck = await lane.start()
            queued = lane.send("a")
            await asyncio.sleep(0)
            lane.clock.advance(0.025)  # the running call is 25 ms in: past twice its estimate
            assert await queued == ["a"]  # an idle thread took it beside the stuck call
            assert not stuck.done()
        finally:
            lane.close()

    asyncio.run(main())
    assert lane.model.calls[2] == (pytest.approx(100.035), ["a"])


def test_a_queue_does_not_wait_for_a_running_call_past_its_latest_start(fake_metrics: Any) -> None:
    lane = BusyLane(fake_metrics, cpu_bound=True)

    async def main() -> None:
        try:
            running = await lane.start()
            # Latest start 9 ms from now, the running call's expected end 10 ms: it cannot wait.
            assert await lane.send("urgent", timeout_s=0.019) == ["urgent"]
            assert not running.done()
        finally:
            lane.close()

    asyncio.run(main())


def test_an_overrun_call_is_a_timeout_even_when_the_loop_answers_it_before_the_sweep(
    fake_metrics: Any,
) -> None:
    clock = FakeClock()
    model = Model(clock, cost_s=10.0)  # the call moves the clock past the 5 s deadline

    async def main() -> None:
        ex = make(fake_metrics, clock)
        try:
            # No sweep runs (its timer is 5 real seconds away): only the delivery sees the overrun.
            with pytest.raises(InferenceTimeoutError):
                await send(ex, pipeline(model), "late", timeout_s=5.0)
        finally:
            ex.close()

    asyncio.run(main())
    assert fake_metrics.timeouts == 1


class Stoppable:
    """A target like a model process: a call holding "stuck" blocks until the executor abandons it
    (it answers that the call was stopped); other calls cost 0.1 s of fake time."""

    max_batch_size = 1

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.entered = threading.Event()
        self.stopped = threading.Event()

    def run_group(self, calls: Any) -> list[Any]:
        if calls[0].items == ["stuck"]:
            self.entered.set()
            self.stopped.wait(STUCK_LIMIT_S)
            return [InferenceError("the model process was stopped", cause="deadline")]
        self.clock.advance(0.1)
        return [list(call.items) for call in calls]

    def abandon(self, call: Any) -> bool:
        self.stopped.set()
        return True


def test_a_call_stopped_at_its_deadline_does_not_feed_the_estimate(fake_metrics: Any) -> None:
    clock = FakeClock()
    target = Stoppable(clock)

    async def main() -> None:
        ex = make(fake_metrics, clock)
        try:
            assert await send(ex, target, "a") == ["a"]  # estimate: 0.1 s
            stuck = send(ex, target, "stuck", timeout_s=0.5)
            await asyncio.to_thread(target.entered.wait, STUCK_LIMIT_S)
            clock.advance(0.6)
            ex.sweep()
            with pytest.raises(InferenceTimeoutError):
                await stuck
            assert await send(ex, target, "b") == ["b"]  # after the stopped call returned (one thread)
            # With the stopped call's 0.6 s as a sample the estimate would be about 0.4 s and this
            # request (0.1 s of work, 0.3 s deadline) refused on arrival.
            assert await send(ex, target, "c", timeout_s=0.3) == ["c"]
        finally:
            ex.close()

    asyncio.run(main())
    assert fake_metrics.sheds == []


def test_a_call_that_overran_its_timeout_does_not_lock_the_version_out(fake_metrics: Any) -> None:
    clock = FakeClock()
    model = Model(clock, cost_s=0.2, hold=1)

    async def main() -> None:
        ex = make(fake_metrics, clock)
        target = pipeline(model)
        try:
            overrun = send(ex, target, "slow", timeout_s=1.0)
            await asyncio.to_thread(model.entered.wait, STUCK_LIMIT_S)
            clock.advance(3.0)  # the call runs 3.2 s against its 1 s timeout (a thread cannot be stopped)
            ex.sweep()
            with pytest.raises(InferenceTimeoutError):
                await overrun
            model.gate.set()
            for _ in range(int(STUCK_LIMIT_S / 0.001)):  # the thread finishes the overrun call
                if not fake_metrics.inflight:
                    break
                await asyncio.sleep(0.001)
            # Its 3.2 s as the estimate would refuse every 1 s request on arrival, and with nothing
            # running nothing would ever correct it: the idle version admits, the sample is capped.
            assert await send(ex, target, "a", timeout_s=1.0) == ["a"]
            assert await send(ex, target, "b", timeout_s=1.0) == ["b"]
        finally:
            model.gate.set()
            ex.close()

    asyncio.run(main())
    assert fake_metrics.sheds == []
    assert model.items == ["slow", "a", "b"]


SPACING_S = 0.0003  # between trickling arrivals, as independent clients' requests come under load


class Trickled:
    """A lane whose requests came one at a time, each in its own loop iteration and answered before the
    next: it learned the spacing of its arrivals without any wait (15 gaps; the next request's is the
    16th, from which on the spacing counts). ``model.calls`` starts with those 16 calls."""

    WARM = 16

    def __init__(self, fake_metrics: Any, *, max_batch_size: int = 8) -> None:
        self.clock = FakeClock()
        self.model = Model(self.clock)
        self.metrics = fake_metrics
        self.max_batch_size = max_batch_size

    def run(
        self, body: Callable[[DeviceExecutor, Pipeline, FakeClock], Any]
    ) -> list[tuple[float, list[Any]]]:
        """Warm the lane, run ``body``; the calls after the warm ones."""

        async def main() -> None:
            ex = make(self.metrics, self.clock)
            target = pipeline(self.model, max_batch_size=self.max_batch_size)
            try:
                for index in range(self.WARM):
                    self.clock.advance(SPACING_S)
                    assert await send(ex, target, f"warm{index}") == [f"warm{index}"]
                await body(ex, target, self.clock)
            finally:
                ex.close()

        asyncio.run(main())
        return self.model.calls[self.WARM :]


def test_trickling_requests_are_gathered_into_one_call_until_they_stop_coming(
    fake_metrics: Any, waiter: Callable[..., bool]
) -> None:
    async def body(ex: DeviceExecutor, target: Pipeline, clock: FakeClock) -> None:
        gathered = [send(ex, target, "a")]
        await asyncio.sleep(0)
        assert await asyncio.to_thread(waiter, lambda: ex.collecting() == 1)
        for item in ("b", "c"):
            clock.advance(SPACING_S)  # each within two spacings of the one before
            gathered.append(send(ex, target, item))
            await asyncio.sleep(0)
        assert ex.collecting() == 1
        clock.advance(3 * SPACING_S)  # none for more than two spacings: the burst is over
        assert await asyncio.gather(*gathered) == [["a"], ["b"], ["c"]]

    assert Trickled(fake_metrics).run(body) == [(pytest.approx(100.0063), ["a", "b", "c"])]


def test_a_gathering_wait_ends_two_ms_after_the_oldest_request(
    fake_metrics: Any, waiter: Callable[..., bool]
) -> None:
    async def body(ex: DeviceExecutor, target: Pipeline, clock: FakeClock) -> None:
        started = clock()
        futures = [send(ex, target, 0)]
        await asyncio.sleep(0)
        assert await asyncio.to_thread(waiter, lambda: ex.collecting() == 1)
        for item in range(1, 7):  # arrivals keep coming, 0.3 ms apart
            clock.advance(SPACING_S)
            futures.append(send(ex, target, item))
            await asyncio.sleep(0)
        assert clock() - started == pytest.approx(0.0018)
        clock.advance(SPACING_S)  # 2.1 ms after the oldest: the call starts with what is there
        await asyncio.gather(*futures)

    calls = Trickled(fake_metrics, max_batch_size=64).run(body)
    assert calls == [(pytest.approx(100.0069), list(range(7)))]


def test_requests_that_arrive_together_are_not_held(fake_metrics: Any) -> None:
    clock = FakeClock()
    model = Model(clock)

    async def main() -> None:
        ex = make(fake_metrics, clock)
        target = pipeline(model, max_batch_size=8)
        try:
            for burst in range(20):  # 4 per loop iteration, as HTTP requests read in one step
                clock.advance(SPACING_S)
                futures = [send(ex, target, f"{burst}-{index}") for index in range(4)]
                # The clock stands still: a held lane would never run (guarded, not timed).
                await asyncio.wait_for(asyncio.gather(*futures), STUCK_LIMIT_S)
        finally:
            ex.close()

    asyncio.run(main())
    assert all(len(batch) == 4 for _, batch in model.calls)


def test_a_lane_whose_waits_collect_nothing_stops_waiting_and_probes_rarely(
    fake_metrics: Any, waiter: Callable[..., bool]
) -> None:
    async def body(ex: DeviceExecutor, target: Pipeline, clock: FakeClock) -> None:
        async def alone(item: str) -> None:
            # One client: nothing else arrives while the thread waits (until 2 ms at most).
            future = send(ex, target, item)
            await asyncio.sleep(0)
            assert await asyncio.to_thread(waiter, lambda: ex.collecting() == 1)
            clock.advance(0.002)
            assert await future == [item]

        for index in range(4):
            await alone(f"miss{index}")
        # Four waits collected nothing: the lane runs lone requests at once (the clock stands still
        # while each one is served: a held lane would never run).
        for index in range(255):
            clock.advance(SPACING_S)
            assert await asyncio.wait_for(send(ex, target, f"now{index}"), STUCK_LIMIT_S)
        await alone("probe")  # every 256 calls one wait again; it collects nothing: off again
        clock.advance(SPACING_S)
        assert await asyncio.wait_for(send(ex, target, "after"), STUCK_LIMIT_S) == ["after"]

    calls = Trickled(fake_metrics).run(body)
    assert [batch for _, batch in calls if len(batch) != 1] == []
    assert calls[-1][1] == ["after"]
