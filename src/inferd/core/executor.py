"""Per-device executors: a bounded queue, worker threads, deadlines, and merging of queued requests.

Why not ``run_in_executor`` + ``wait_for`` per request: on this 2-core machine that pair alone halves
the throughput of a trivial model (see PERF-NOTES). Instead:

- requests submitted during one event-loop iteration are handed to the threads in one step, and a
  free thread takes every queued request of one pipeline (up to its ``max_batch_size`` items) as one
  model call, so under load a single thread hop serves many requests;
- results come back to the loop with one ``call_soon_threadsafe`` per model call;
- deadlines live in insertion-ordered tables (one per timeout value, so each is sorted by deadline)
  swept by one loop timer, not one timer per request; finished work leaves its table at once, so
  the garbage collector never walks thousands of finished requests waiting for their deadline.

Python cannot kill a thread: a call past its deadline is answered with a timeout at once, but the
thread stays busy (and counted in ``executor_inflight``) until the call really returns.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from inferd.core.errors import InferdError, InferenceError, InferenceTimeoutError, OverloadedError


class Batchable(Protocol):
    """What the executor runs: a pipeline that can execute several requests in shared model calls."""

    max_batch_size: int

    def run_group(self, calls: Sequence[Any]) -> Sequence[Any]: ...


class ExecutorMetrics(Protocol):
    def inflight_add(self, amount: int) -> None: ...
    def queued_add(self, amount: int) -> None: ...
    def timeout(self) -> None: ...
    def step(self, target: Any, items: int) -> None: ...


@dataclass(eq=False, slots=True)
class _Work:
    target: Batchable
    call: Any
    size: int
    future: asyncio.Future[Any]
    deadline: float
    timeout_s: float
    key: tuple[Batchable, Hashable]  # queue of requests that may share a model call
    abandoned: bool = False  # set on the loop when the deadline passed; threads skip queued abandoned work


class DeviceExecutor:
    def __init__(
        self,
        *,
        device: str,
        threads: int,
        queue_limit: int,
        metrics: ExecutorMetrics,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.device = device
        self.threads = threads
        self.queue_limit = queue_limit
        self._metrics = metrics
        self._loop = loop
        self._cond = threading.Condition(threading.Lock())
        self._queues: dict[tuple[Batchable, Hashable], deque[_Work]] = {}
        self._ready: deque[tuple[Batchable, Hashable]] = deque()  # keys with queued work, round-robin
        self._queued = 0  # requests accepted and not yet taken by a thread (guarded by _cond)
        self._idle = 0
        self._closed = False
        self._submitted: list[_Work] = []  # this loop iteration's submissions, handed over in one step
        self._flush_scheduled = False
        # timeout_s → {work: None}: one insertion-ordered table per timeout value keeps deadlines sorted.
        self._deadlines: dict[float, dict[_Work, None]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_when = 0.0
        self._workers = [
            threading.Thread(target=self._worker_loop, name=f"inferd-{device}-{i}", daemon=True)
            for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    # -- loop side -------------------------------------------------------------------------------

    def submit(
        self, target: Batchable, call: Any, *, size: int, timeout_s: float, group: Hashable = None
    ) -> asyncio.Future[Any]:
        """Queue one request; the future resolves to the pipeline's outcome or raises a timeout.
        Only requests with the same ``target`` and ``group`` are merged into one model call."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            raise OverloadedError(f"the {self.device} executor is shutting down")
        pending = self._queued + len(self._submitted)
        if pending >= self.queue_limit:
            raise OverloadedError(
                f"the {self.device} executor queue is full ({self.queue_limit} requests waiting); retry later",
                cause="queue full",
            )
        future: asyncio.Future[Any] = loop.create_future()
        deadline = loop.time() + timeout_s
        work = _Work(target, call, size, future, deadline, timeout_s, (target, group))
        self._submitted.append(work)
        table = self._deadlines.get(timeout_s)
        if table is None:
            table = self._deadlines[timeout_s] = {}
        table[work] = None
        if self._timer is None or deadline < self._timer_when:
            self._arm(loop, deadline)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        submitted, self._submitted = self._submitted, []
        with self._cond:
            for work in submitted:
                queue = self._queues.get(work.key)
                if queue is None:
                    queue = self._queues[work.key] = deque()
                if not queue:
                    self._ready.append(work.key)
                queue.append(work)
            self._queued += len(submitted)
            wake = min(self._idle, len(self._ready))
            if wake:
                self._cond.notify(wake)
        self._metrics.queued_add(len(submitted))

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._sweep)
        self._timer_when = when

    def _sweep(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time()
        earliest: float | None = None
        for timeout_s, table in list(self._deadlines.items()):
            while table:
                work = next(iter(table))
                if work.deadline > now:
                    earliest = work.deadline if earliest is None else min(earliest, work.deadline)
                    break
                del table[work]
                self._expire(work)
            if not table:
                del self._deadlines[timeout_s]
        if earliest is not None:
            self._arm(loop, earliest)

    def _expire(self, work: _Work) -> None:
        if work.future.done():
            return
        work.abandoned = True
        self._metrics.timeout()
        work.future.set_exception(
            InferenceTimeoutError(
                f"{work.target!r} did not finish within {work.timeout_s:g}s on the {self.device} executor",
                cause=f"deadline {work.timeout_s:g}s",
            )
        )

    def _deliver(self, works: list[_Work], outcomes: Sequence[Any] | BaseException) -> None:
        for index, work in enumerate(works):
            table = self._deadlines.get(work.timeout_s)
            if table is not None:
                table.pop(work, None)
            if work.future.done():
                continue
            if isinstance(outcomes, BaseException):
                work.future.set_exception(outcomes)
            else:
                outcome = outcomes[index]
                if isinstance(outcome, BaseException):
                    work.future.set_exception(outcome)
                else:
                    work.future.set_result(outcome)

    # -- thread side -----------------------------------------------------------------------------

    def _take(self) -> list[_Work] | None:
        """Block until work is queued; take up to max_batch_size items of one key (at least one request)."""
        with self._cond:
            while not self._ready:
                if self._closed:
                    return None
                self._idle += 1
                self._cond.wait()
                self._idle -= 1
            key = self._ready.popleft()
            queue = self._queues[key]
            taken: list[_Work] = []
            items = 0
            limit = key[0].max_batch_size
            while queue and (not taken or items + queue[0].size <= limit):
                work = queue.popleft()
                items += work.size
                taken.append(work)
            if queue:
                self._ready.append(key)
            else:
                del self._queues[key]  # keys include request parameters: do not keep one per value forever
            if self._ready and self._idle:
                # _flush wakes one thread per ready target; work this thread left behind (its pipeline's
                # max_batch_size was reached) goes to another idle thread instead of waiting for this call.
                self._cond.notify()
            self._queued -= len(taken)
            return taken

    def _worker_loop(self) -> None:
        metrics = self._metrics
        while True:
            taken = self._take()
            if taken is None:
                return
            metrics.queued_add(-len(taken))
            # Skip work nobody waits for: past its deadline, or its client went away (future cancelled).
            works = [work for work in taken if not work.abandoned and not work.future.done()]
            if not works:
                continue
            metrics.inflight_add(len(works))
            try:
                metrics.step(works[0].target, sum(work.size for work in works))
                outcomes: Sequence[Any] | BaseException = works[0].target.run_group([w.call for w in works])
            except InferdError as exc:
                outcomes = exc
            except BaseException as exc:  # a bug in the pipeline wrapper itself; never kill the thread
                outcomes = InferenceError(f"internal error while running the model: {type(exc).__name__}")
            finally:
                metrics.inflight_add(-len(works))
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._deliver, works, outcomes)
                except RuntimeError:  # loop closed between the check and the call
                    return

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
