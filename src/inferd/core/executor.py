"""Per-device executors: per-version queues, deadline-aware admission, fair dispatch, adaptive batching.

Why not ``run_in_executor`` + ``wait_for`` per request: on this 2-core machine that pair alone halves
the throughput of a trivial model (see PERF-NOTES). Instead:

- requests submitted during one event-loop iteration are handed to the threads in one step, and a
  free thread takes queued requests of one model version (up to its ``max_batch_size`` items) as one
  model call, so under load a single thread hop serves many requests;
- results come back to the loop with one ``call_soon_threadsafe`` per model call;
- deadlines live in insertion-ordered tables (one per timeout value and version, so each is sorted by
  deadline) swept by one loop timer, not one timer per request; finished work leaves its table at
  once, so the garbage collector never walks thousands of finished requests waiting for their deadline.

Scheduling (the README's "Scheduling under load" explains the policy for users):

- **Lanes.** Each model version has its own lane: a bounded queue (``queue_limit`` requests), a share
  of the device's threads (``weight``), a cap on the threads it may hold (``max_concurrency``) and an
  estimate of its call time (an EWMA of measured calls plus a deviation term, like TCP's RTO).
- **Between versions**: a free thread serves the lane with queued work that has used the least device
  time per unit of weight (start-time fair queuing; a lane that was idle rejoins at the current virtual
  time, so idling earns no credit). A saturated version cannot hold threads beyond its cap, and its
  queue never delays another version's queue.
- **Between tenants, inside a lane**: the same virtual-time scheme over items, weighted per tenant, with
  an optional per-tenant cap on requests executing at once on the device.
- **Admission**: a request is refused at once (``overloaded``, with a ``retry_after_s`` derived from the
  work ahead of it) when the lane's estimate says it cannot finish before its deadline. Queued work that
  has not started by its latest start time (deadline minus the call estimate) is dropped unrun, from
  the sweep or when a thread reaches it; a call that started and overran its deadline is a timeout.
- **Adaptive batching**: with ``max_delay_s`` a thread that finds fewer queued items than a preferred
  batch size holds the lane up to that long after the oldest request arrived (never past its latest
  start), then runs whatever it has; with 0 it runs what is queued at once. A lane whose waits run out
  with the same few items, all there early (a closed loop smaller than any batch size, one client),
  learns that size and ends later waits as soon as the queue holds it.
- **Batching while busy** (no delay added): a version whose calls keep their thread on the CPU
  (thread CPU time at least half the run time, measured on calls that ran alone: Python, scikit-learn,
  anything holding the GIL) gains nothing from a second call beside a running one: both compete for
  the GIL. While one of its calls runs and less than a full batch is queued, the queue waits for that
  call's thread, which takes it as one call when it returns; a second thread joins for a full batch,
  when the oldest request could not start in time after the running call, or when that call has run
  twice its estimate (stuck). Calls that wait off the CPU (I/O, sleeps, a model process) still run
  side by side.
- **Gathering** (``max_delay_s`` 0, automatic): requests that reach the executor one loop iteration at a
  time (open-loop traffic: independent clients whose requests come spaced, not in bursts) are held while
  they keep coming, at most 2 ms from the oldest, then run as one call instead of one call each.
  Requests that arrive together (HTTP and gRPC under load: a loop iteration reads every connection that
  has data) are never held, and a lane whose waits collect nothing (one client) stops waiting, trying
  again once every 256 calls.

The seam between scheduling and execution is :meth:`DeviceExecutor._execute`: one call, one slot, one
group of requests of one version; everything around it (queues, admission, accounting) stays here.

Python cannot kill a thread: a call past its deadline is answered with a timeout at once, but the
thread stays busy (and counted in ``executor_inflight``) until the call really returns.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from inferd.core.errors import InferdError, InferenceError, InferenceTimeoutError, OverloadedError


class Batchable(Protocol):
    """What the executor runs: a pipeline that can execute several requests in shared model calls."""

    max_batch_size: int

    def run_group(self, calls: Sequence[Any]) -> Sequence[Any]: ...


class ShedReason(enum.StrEnum):
    """Why the executor answered ``overloaded`` without running a request."""

    QUEUE_FULL = "queue_full"  # the version's queue holds queue_limit requests
    DEADLINE = "deadline"  # refused at admission: the work ahead leaves no time to finish
    EXPIRED = "expired"  # dropped from the queue: not started by its latest start time
    SHUTDOWN = "shutdown"  # the executor is closing


class ExecutorMetrics(Protocol):
    def inflight_add(self, amount: int) -> None: ...
    def queued_add(self, amount: int) -> None: ...
    def timeout(self) -> None: ...
    def shed(self, reason: ShedReason) -> None: ...
    def step(self, target: Any, items: int) -> None: ...


@dataclass(frozen=True, slots=True)
class LanePolicy:
    """A model version's scheduling settings (``model.yaml``)."""

    weight: float = 1.0
    max_concurrency: int | None = None  # threads of the device this version may hold; None: all
    queue_limit: int | None = None  # requests waiting; None: the executor's default
    max_delay_s: float = 0.0
    preferred_batch_sizes: tuple[int, ...] = ()
    service_time_s: float = 0.0  # call-time estimate until the first call is measured
    deadline_admission: bool = True
    batch_while_busy: bool = True  # compute-bound calls: queue behind a running call (see the module doc)


@dataclass(frozen=True, slots=True)
class TenantShare:
    """A tenant's share of each version it uses (the config file's ``tenants:`` section)."""

    weight: float = 1.0
    max_concurrency: int | None = None  # requests executing at once on one device; None: no cap


DEFAULT_POLICY = LanePolicy()
DEFAULT_SHARE = TenantShare()
_EWMA_ALPHA = 0.2  # weight of a new call in the mean (TCP's 1/8 adapts too slowly to a load change)
_EWMA_BETA = 0.25  # weight of a new call in the mean deviation
_DEVIATIONS = 2.0  # admission plans with mean + 2 deviations: a late start wastes a whole call
# A version whose calls keep their thread on the CPU for at least this share of their run time (measured
# on calls that ran alone in the version) is compute-bound: a second call beside it mostly competes for
# the GIL (or the cores) instead of adding throughput.
_COMPUTE_BOUND_SHARE = 0.5
_CPU_ALPHA = 0.2
# A compute-bound version's queue waits for its running call at most this many call estimates: a call
# that runs longer is stuck or slowed, and the queue is served beside it.
_BUSY_WAIT_ESTIMATES = 2.0
# The idle thread watching for that sleeps at least this long (Python's GIL switch interval): finer
# timing is not real while a model holds the GIL, and each wake-up takes the GIL from the loop.
_WATCH_FLOOR_S = 0.005
# How long a batch size learned from a closed loop (see ``DeviceExecutor._collected``) holds: after
# that the version waits the whole delay once more to check it, one delay per second at most.
_LEARNED_S = 1.0
# Gathering (the default path, max_delay_ms 0): requests that reach the loop one per iteration (spaced
# arrivals of independent clients) are collected into one call while they keep coming, so each merged
# request saves the model's per-call cost and a thread hand-over. The wait ends when no request came for
# _GATHER_GAPS typical spacings, at _GATHER_CAP_S after the oldest request's arrival, or at a full batch.
_GATHER_CAP_S = 0.002
_GATHER_GAPS = 2.0
_SPACING_ALPHA = 0.2
_SPACING_SAMPLES = 16  # handovers measured before a lane's spacing is trusted
# A lane gathers only while its arrivals come alone: HTTP requests that arrive together reach the executor in
# one step, and a closed loop's burst is complete when it comes (waiting would only add its latency).
_TRICKLE = 1.5  # mean requests per handover at or below which arrivals trickle
# Pay-off: a lane whose last _GATHER_MISSES waits collected no other request (one client, a slow trickle)
# stops waiting, and tries one wait again every _GATHER_PROBE_CALLS calls.
_GATHER_MISSES = 4
_GATHER_PROBE_CALLS = 256

# A work is staged (submitted this loop iteration), then queued, then started or gone (left unrun).
_STAGED, _QUEUED, _STARTED, _GONE = 0, 1, 2, 3


class _Account:
    """A tenant's standing in one lane: items served per unit of weight, in the lane's virtual time."""

    __slots__ = ("name", "share", "vpass")

    def __init__(self, name: str, share: TenantShare) -> None:
        self.name = name
        self.share = share
        self.vpass = 0.0


class _Tenant:
    """A tenant's queued works of one group (requests with other parameters queue apart: they never
    share a model call); the tenant's groups share one account."""

    __slots__ = ("account", "group", "works")

    def __init__(self, account: _Account, group: Hashable) -> None:
        self.account = account
        self.group = group
        self.works: deque[_Work] = deque()


class _Lane:
    """One model version on one device (all fields guarded by the executor's lock unless noted)."""

    __slots__ = (
        "label",
        "policy",
        "max_batch_size",
        "slots",
        "queue_limit",
        "preferred",
        "accounts",
        "tenants",
        "active",
        "vtime",
        "queued_items",
        "queued_requests",
        "staged_items",
        "staged_requests",
        "running_since",
        "vpass",
        "listed",
        "mean",
        "dev",
        "estimate",
        "collecting",
        "cond",
        "cpu_share",
        "overlaps",
        "running_items",
        "learned",
        "learned_until",
        "short",
        "arrived",
        "spacing",
        "spaced",
        "per_handover",
        "gathered_from",
        "misses",
        "probe_in",
    )

    def __init__(
        self, label: str, policy: LanePolicy, max_batch_size: int, threads: int, queue_limit: int, lock: Any
    ) -> None:
        self.label = label
        self.policy = policy
        self.max_batch_size = max(1, max_batch_size)
        self.slots = min(threads, policy.max_concurrency or threads)
        self.queue_limit = policy.queue_limit or queue_limit
        self.preferred = tuple(sorted(s for s in policy.preferred_batch_sizes if s <= self.max_batch_size))
        self.accounts: dict[str, _Account] = {}
        self.tenants: dict[tuple[str, Hashable], _Tenant] = {}
        self.active: list[_Tenant] = []  # queues with works
        self.vtime = 0.0
        self.queued_items = 0
        self.queued_requests = 0
        self.staged_items = 0  # submitted this loop iteration, not yet handed over (loop only)
        self.staged_requests = 0
        # Start times of running calls; replaced, never mutated, so the loop reads it without the lock.
        self.running_since: tuple[float, ...] = ()
        self.vpass = 0.0
        self.listed = False
        self.mean = policy.service_time_s
        self.dev = 0.0
        self.estimate = policy.service_time_s  # mean + deviations: what admission plans with
        self.collecting = False
        self.cond = threading.Condition(lock)
        self.cpu_share = -1.0  # EWMA of thread CPU time / run time of calls that ran alone; -1: none yet
        self.overlaps = 0  # calls started beside a running call: a call ran alone if this did not move
        self.running_items = 0
        self.learned = 0  # with max_delay_s: the batch its traffic fills (0: none), until learned_until
        self.learned_until = 0.0
        self.short = 0  # items of the last wait that ran out with its queue complete early (0: none)
        # Gathering (default path): when requests last arrived, EWMAs of the time between arrivals
        # (capped at _GATHER_CAP_S) and of requests per handover; the queued items when the current
        # wait began (-1: none); consecutive waits that collected nothing; calls until the next probe.
        self.arrived = -1.0
        self.spacing = -1.0
        self.spaced = 0  # spacing samples
        self.per_handover = 1.0
        self.gathered_from = -1
        self.misses = 0
        self.probe_in = 0

    def observe(self, elapsed: float) -> None:
        if self.mean == 0.0 and self.dev == 0.0:
            self.mean = elapsed
        else:
            self.dev += _EWMA_BETA * (abs(elapsed - self.mean) - self.dev)
            self.mean += _EWMA_ALPHA * (elapsed - self.mean)
        self.estimate = self.mean + _DEVIATIONS * self.dev

    def observe_cpu(self, share: float) -> None:
        if self.cpu_share < 0.0:
            self.cpu_share = share
        else:
            self.cpu_share += _CPU_ALPHA * (share - self.cpu_share)

    def note_arrivals(self, now: float, count: int) -> None:
        """``count`` requests were handed over at ``now`` (one loop iteration's submissions)."""
        if self.arrived >= 0.0:
            gap = min(now - self.arrived, _GATHER_CAP_S)
            self.spacing = gap if self.spacing < 0.0 else self.spacing + _SPACING_ALPHA * (gap - self.spacing)
            self.spaced += 1
        self.arrived = now
        self.per_handover += _SPACING_ALPHA * (count - self.per_handover)

    def gathered(self, items: int) -> None:
        """A wait for more requests ended with ``items`` queued (the pay-off rule)."""
        if items > self.gathered_from:
            self.misses = 0
        else:
            self.misses += 1
            if self.misses >= _GATHER_MISSES:
                self.probe_in = _GATHER_PROBE_CALLS
        self.gathered_from = -1

    def may_gather(self) -> bool:
        """Whether a free thread may wait for more of this lane's requests before a call (default path)."""
        if self.policy.max_delay_s > 0.0 or self.max_batch_size <= 1:
            return False
        if self.spaced < _SPACING_SAMPLES or self.per_handover > _TRICKLE:
            return False
        if not 0.0 < self.spacing < _GATHER_CAP_S:
            return False
        if self.misses >= _GATHER_MISSES:
            if self.probe_in > 0:
                return False
            self.misses = _GATHER_MISSES - 1  # one probe: a miss stops it again, a catch resumes
        return True

    @property
    def batches_while_busy(self) -> bool:
        """Whether queued work waits for the running call rather than starting another one beside it."""
        return (
            self.max_batch_size > 1
            and self.policy.batch_while_busy
            and self.cpu_share >= _COMPUTE_BOUND_SHARE
        )

    def start_in(self, now: float, calls_ahead: int) -> float:
        """Seconds until a call with ``calls_ahead`` calls before it starts: running calls free their
        slot after the estimate, then each slot serves the queue one estimate at a time."""
        estimate = self.estimate
        free = [max(0.0, since + estimate - now) for since in self.running_since]
        if len(free) < self.slots:
            free.extend([0.0] * (self.slots - len(free)))
        free.sort()
        rounds, index = divmod(calls_ahead, len(free))
        return free[index] + rounds * estimate


@dataclass(eq=False, slots=True)
class _Work:
    target: Batchable
    call: Any
    size: int
    future: asyncio.Future[Any]
    deadline: float
    timeout_s: float
    group: Hashable  # only works with the same group share a model call
    tenant: str
    lane: _Lane
    enqueued: float
    state: int = _STAGED
    table: dict[_Work, None] | None = None  # the deadline table holding it (loop only)
    # The deadline is the client's own (shorter than the model's timeout_s): its expiry is the
    # client's business, not a slow model, and is not an executor timeout.
    client_deadline: bool = False
    stopped: bool = False  # timed out, and the target stopped its call (a model process): not a sample
    # Admitted to an idle version whatever its estimate, and never dropped for it: an estimate that
    # refused every request would never meet a call that corrects it (e.g. after one overrun call).
    probe: bool = False


@dataclass(slots=True)
class _Taken:
    lane: _Lane
    works: list[_Work]
    dropped: list[_Work]
    left_queue: int
    started: float
    charged: float
    overlaps: int  # the lane's count when it started; -1: it started beside another call


class DeviceExecutor:
    def __init__(
        self,
        *,
        device: str,
        threads: int,
        queue_limit: int,
        metrics: ExecutorMetrics,
        tenants: Mapping[str, TenantShare] | None = None,
        default_share: TenantShare = DEFAULT_SHARE,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.thread_time,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.device = device
        self.threads = threads
        self.queue_limit = queue_limit
        self._metrics = metrics
        self._shares = dict(tenants or {})
        self._default_share = default_share
        self._tenant_caps = default_share.max_concurrency is not None or any(
            share.max_concurrency is not None for share in self._shares.values()
        )
        self._clock = clock
        self._cpu_clock = cpu_clock  # the calling thread's CPU time
        self._loop = loop
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # Lanes die with their pipeline (a reload replaces pipelines); a lane never refers to its target.
        self._lanes: weakref.WeakKeyDictionary[Batchable, _Lane] = weakref.WeakKeyDictionary()
        self._listed: list[_Lane] = []  # lanes with queued works (guarded by _cond)
        self._vtime = 0.0
        self._tenant_running: dict[str, int] = {}
        self._idle = 0
        self._watcher = False  # an idle thread waits with a timeout for a held lane's wait to end
        self._closed = False
        self._submitted: list[_Work] = []  # this loop iteration's submissions, handed over in one step
        self._flush_scheduled = False
        # (timeout_s, lane) → {work: None}: insertion order is deadline order within each table.
        self._queued_deadlines: dict[tuple[float, _Lane], dict[_Work, None]] = {}
        self._started_deadlines: dict[tuple[float, _Lane], dict[_Work, None]] = {}
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
        self,
        target: Batchable,
        call: Any,
        *,
        size: int,
        timeout_s: float,
        group: Hashable = None,
        tenant: str = "",
        policy: LanePolicy | None = None,
        client_deadline: bool = False,
    ) -> asyncio.Future[Any]:
        """Queue one request; the future resolves to the pipeline's outcome or raises a timeout.
        Only requests with the same ``target`` and ``group`` are merged into one model call.
        Raises :class:`OverloadedError` at once when the request cannot be served in time."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            self._metrics.shed(ShedReason.SHUTDOWN)
            raise OverloadedError(f"the {self.device} executor is shutting down", cause="shutting down")
        lane = self._lanes.get(target)
        if lane is None:
            lane = self._lanes[target] = _Lane(
                repr(target),
                policy or DEFAULT_POLICY,
                target.max_batch_size,
                self.threads,
                self.queue_limit,
                self._lock,
            )
        now = self._clock()
        if lane.queued_requests + lane.staged_requests >= lane.queue_limit:
            self._metrics.shed(ShedReason.QUEUE_FULL)
            wait = lane.start_in(now, self._calls(lane, lane.queued_items + lane.staged_items))
            raise OverloadedError(
                f"{lane.label}: queue is full ({lane.queue_limit} requests waiting on the "
                f"{self.device} executor, its queue_limit); retry later",
                retry_after_s=max(wait, lane.estimate) or 1.0,
                cause="queue full",
            )
        estimate = lane.estimate
        probe = not lane.running_since and not (lane.queued_requests or lane.staged_requests)
        if estimate > 0.0 and lane.policy.deadline_admission and not probe:
            ahead = self._calls(lane, lane.queued_items + lane.staged_items)
            own = estimate * -(-size // lane.max_batch_size)
            # Cheap bound first (every slot busy for a whole estimate); plan exactly only near the limit.
            if estimate * (ahead // lane.slots + 1) + own > timeout_s:
                finish = lane.start_in(now, ahead) + own
                if finish > timeout_s:
                    self._metrics.shed(ShedReason.DEADLINE)
                    raise OverloadedError(
                        f"{lane.label} cannot finish this request within its {timeout_s:g}s deadline on the "
                        f"{self.device} executor: about {finish:.3g}s of work is ahead of it; retry later "
                        f"or allow more time (timeout_s)",
                        retry_after_s=finish - timeout_s,
                        cause="deadline unreachable",
                    )
        future: asyncio.Future[Any] = loop.create_future()
        deadline = now + timeout_s
        work = _Work(target, call, size, future, deadline, timeout_s, group, tenant, lane, now)
        work.client_deadline = client_deadline
        work.probe = probe
        lane.staged_items += size
        lane.staged_requests += 1
        self._submitted.append(work)
        key = (timeout_s, lane)
        table = self._queued_deadlines.get(key)
        if table is None:
            table = self._queued_deadlines[key] = {}
        table[work] = None
        work.table = table
        expiry = deadline - estimate if lane.policy.deadline_admission and not probe else deadline
        if self._timer is None or expiry < self._timer_when:
            self._arm(loop, expiry)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    @staticmethod
    def _calls(lane: _Lane, items: int) -> int:
        return -(-items // lane.max_batch_size)

    def _share(self, tenant: str) -> TenantShare:
        return self._shares.get(tenant, self._default_share)

    def _flush(self) -> None:
        self._flush_scheduled = False
        submitted, self._submitted = self._submitted, []
        queued = 0
        with self._cond:
            arrivals: dict[_Lane, int] = {}  # lanes that got work, in order: requests each
            for work in submitted:
                lane = work.lane
                lane.staged_items -= work.size
                lane.staged_requests -= 1
                if work.state != _STAGED:  # swept before it was handed over
                    continue
                work.state = _QUEUED
                tenant = lane.tenants.get((work.tenant, work.group))
                if tenant is None:
                    account = lane.accounts.get(work.tenant)
                    if account is None:
                        account = lane.accounts[work.tenant] = _Account(work.tenant, self._share(work.tenant))
                    tenant = lane.tenants[(work.tenant, work.group)] = _Tenant(account, work.group)
                if not tenant.works:
                    # A tenant that was idle rejoins at the lane's virtual time: idling earns no credit.
                    tenant.account.vpass = max(tenant.account.vpass, lane.vtime)
                    lane.active.append(tenant)
                tenant.works.append(work)
                lane.queued_items += work.size
                lane.queued_requests += 1
                queued += 1
                arrivals[lane] = arrivals.get(lane, 0) + 1
                if not lane.listed:
                    lane.listed = True
                    lane.vpass = max(lane.vpass, self._vtime)
                    self._listed.append(lane)
            wake = 0
            now = self._clock()
            for lane, count in arrivals.items():
                lane.note_arrivals(now, count)
                if lane.learned:
                    # More requests at once than the learned batch: more clients came; wait for them.
                    lane.learned = max(lane.learned, lane.queued_items + lane.running_items)
                if lane.collecting:
                    if self._collected(lane, now):
                        lane.cond.notify()
                    continue
                if self._held_until(lane, now) is not None:
                    wake += not self._watcher  # the running call's thread takes the queue; one watches
                    continue
                wake += min(self._calls(lane, lane.queued_items), lane.slots - len(lane.running_since))
            wake = min(self._idle, wake)
            if wake > 0:
                self._cond.notify(wake)
        if queued:
            self._metrics.queued_add(queued)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(max(0.0, when - self._clock()), self.sweep)
        self._timer_when = when

    def sweep(self) -> None:
        """Answer what passed its time: queued work past its latest start is dropped (``overloaded``;
        a timeout where the version turned deadline admission off), started work past its deadline
        times out. Runs from the executor's one timer; tests with a fake clock call it directly."""
        self._timer = None
        loop = self._loop
        if loop is None:
            return
        now = self._clock()
        earliest: float | None = None
        dropped: list[_Work] = []
        timed_out: list[_Work] = []
        left_queue = 0
        with self._lock:
            for key, table in list(self._queued_deadlines.items()):
                lane = key[1]
                slack = lane.estimate if lane.policy.deadline_admission else 0.0
                while table:
                    work = next(iter(table))
                    if work.state <= _QUEUED:
                        latest_start = work.deadline - (0.0 if work.probe else slack)
                        if latest_start > now and not work.future.done():
                            earliest = latest_start if earliest is None else min(earliest, latest_start)
                            break
                        if work.state == _QUEUED:
                            self._leave_queue(work)
                            left_queue += 1
                        else:  # not handed over yet: _flush skips it
                            work.state = _GONE
                        if not work.future.done():
                            (dropped if lane.policy.deadline_admission else timed_out).append(work)
                    del table[work]
                    work.table = None
                    if work.state == _STARTED:
                        # Started: its deadline now decides; it moves in deadline order, keeping order.
                        started = self._started_deadlines.get(key)
                        if started is None:
                            started = self._started_deadlines[key] = {}
                        started[work] = None
                        work.table = started
                if not table:
                    del self._queued_deadlines[key]
            for key, table in list(self._started_deadlines.items()):
                while table:
                    work = next(iter(table))
                    if work.deadline > now:
                        earliest = work.deadline if earliest is None else min(earliest, work.deadline)
                        break
                    del table[work]
                    work.table = None
                    timed_out.append(work)
                if not table:
                    del self._started_deadlines[key]
        if left_queue:
            self._metrics.queued_add(-left_queue)
        for work in dropped:
            self._drop(work)
        for work in timed_out:
            self._expire(work)
        if earliest is not None:
            self._arm(loop, earliest)

    def _leave_queue(self, work: _Work) -> None:
        """A queued work leaves without running (under the lock); a thread skips it later."""
        work.state = _GONE
        lane = work.lane
        lane.queued_items -= work.size
        lane.queued_requests -= 1

    def _drop(self, work: _Work) -> None:
        if work.future.done():
            return
        self._metrics.shed(ShedReason.EXPIRED)
        lane = work.lane
        work.future.set_exception(
            OverloadedError(
                f"{lane.label} could not start this request in time to finish within its "
                f"{work.timeout_s:g}s deadline on the {self.device} executor; retry later",
                retry_after_s=lane.estimate or 1.0,
                cause="dropped unrun",
            )
        )

    def _expire(self, work: _Work) -> None:
        if work.future.done():
            return
        abandon = getattr(work.target, "abandon", None)
        if abandon is not None and abandon(work.call):  # a model process can be stopped, a thread cannot
            work.stopped = True
        self._time_out(work)

    def _time_out(self, work: _Work) -> None:
        if work.client_deadline:
            work.future.set_exception(
                InferenceTimeoutError(
                    f"{work.target!r} did not finish within the request's timeout_s of {work.timeout_s:g}s",
                    cause=f"client deadline {work.timeout_s:g}s",
                )
            )
            return
        self._metrics.timeout()
        work.future.set_exception(
            InferenceTimeoutError(
                f"{work.target!r} did not finish within {work.timeout_s:g}s on the {self.device} executor",
                cause=f"deadline {work.timeout_s:g}s",
            )
        )

    def _deliver(
        self,
        works: list[_Work],
        outcomes: Sequence[Any] | BaseException,
        dropped: list[_Work],
        finished: float,
    ) -> None:
        for work in dropped:
            if work.table is not None:
                work.table.pop(work, None)
                work.table = None
            self._drop(work)
        for index, work in enumerate(works):
            if work.table is not None:
                work.table.pop(work, None)
                work.table = None
            if work.future.done():
                continue
            if finished > work.deadline:
                # The call overran the deadline and the loop, stalled, runs this before the sweep that
                # would have answered it: a timeout all the same, never a late success.
                self._time_out(work)
                continue
            if isinstance(outcomes, BaseException):
                work.future.set_exception(outcomes)
            else:
                outcome = outcomes[index]
                if isinstance(outcome, BaseException):
                    work.future.set_exception(outcome)
                else:
                    work.future.set_result(outcome)

    # -- thread side (everything below runs with the lock held unless it says otherwise) -----------

    def _tenant_ready(self, account: _Account, extra: int = 0) -> bool:
        cap = account.share.max_concurrency
        return cap is None or self._tenant_running.get(account.name, 0) + extra < cap

    def _lane_ready(self, lane: _Lane) -> bool:
        if lane.collecting or len(lane.running_since) >= lane.slots or lane.queued_requests <= 0:
            return False
        if not self._tenant_caps:
            return True
        return any(tenant.works and self._tenant_ready(tenant.account) for tenant in lane.active)

    def _oldest(self, lane: _Lane) -> _Work | None:
        oldest: _Work | None = None
        for tenant in lane.active:
            for work in tenant.works:
                if work.state == _QUEUED:
                    if oldest is None or work.enqueued < oldest.enqueued:
                        oldest = work
                    break
        return oldest

    def _held_until(self, lane: _Lane, now: float) -> float | None:
        """Until when a compute-bound lane's queue waits for its running call instead of starting a
        call beside it; None: it does not wait. The thread that runs the call takes the queue as one
        call when it returns: batching with no delay added, and no second call fighting the first
        for the GIL. It waits for no more than a full batch, and only while that call is expected to
        finish before the oldest request's latest start and has not overrun twice its estimate."""
        running = lane.running_since
        if not running or not lane.batches_while_busy or self._closed or self._batch_ready(lane):
            return None
        oldest = self._oldest(lane)
        if oldest is None:
            return None
        estimate = lane.estimate
        first = min(running)
        latest_start = oldest.deadline - estimate
        if latest_start < first + estimate:
            return None
        until = min(first + _BUSY_WAIT_ESTIMATES * estimate, latest_start)
        return until if until > now else None

    def _ready(self, lane: _Lane, now: float) -> bool:
        return self._lane_ready(lane) and self._held_until(lane, now) is None

    def _pick_lane(self, now: float) -> tuple[_Lane | None, float | None]:
        """The lane a free thread serves now, and when a lane whose queue waits for its running call
        stops waiting (the earliest, if no lane is ready)."""
        best: _Lane | None = None
        wake: float | None = None
        for lane in list(self._listed):
            if lane.queued_requests <= 0:
                # Only skipped (dropped or abandoned) works are left: forget them.
                lane.tenants.clear()
                lane.active.clear()
                lane.listed = False
                self._listed.remove(lane)
                continue
            if not self._lane_ready(lane):
                continue
            held = self._held_until(lane, now)
            if held is not None:
                wake = held if wake is None else min(wake, held)
            elif best is None or lane.vpass < best.vpass:
                best = lane
        return best, wake

    def _batch_ready(self, lane: _Lane) -> bool:
        items = lane.queued_items
        return (
            items >= lane.max_batch_size
            or items in lane.preferred
            or (bool(lane.preferred) and items >= lane.preferred[-1])
        )

    def _collected(self, lane: _Lane, now: float) -> bool:
        """Whether a thread collecting a batch of ``lane`` (``max_delay_s``) has what it waits for: a
        batch size worth running, or the batch its traffic has been filling (``_learn``)."""
        return self._batch_ready(lane) or (0 < lane.learned <= lane.queued_items and now < lane.learned_until)

    def _learn(self, lane: _Lane, now: float) -> None:
        """A collecting wait ran out. When its queue was complete in the first half of the delay and
        nothing more came, twice in a row with the same number of items, that number is all the
        traffic has (a closed loop of N clients: N, fewer than any batch size; one client: 1), and
        later waits end as soon as the queue holds it instead of adding the delay to every call.
        Requests that keep arriving through the wait (an open loop) never teach it; more requests
        at once than it (``_flush``) raise it, and it lapses after ``_LEARNED_S``."""
        if self._collected(lane, now):
            return
        oldest: _Work | None = None
        newest = 0.0
        for tenant in lane.active:
            for work in tenant.works:
                if work.state == _QUEUED:
                    if oldest is None or work.enqueued < oldest.enqueued:
                        oldest = work
                    newest = max(newest, work.enqueued)
        delay = lane.policy.max_delay_s
        if oldest is None or now < oldest.enqueued + delay or newest - oldest.enqueued > delay / 2:
            lane.short = 0  # cut short (a latest start, closing), or requests still came late
            return
        if lane.queued_items == lane.short:
            lane.learned = lane.short
            lane.learned_until = now + _LEARNED_S
        lane.short = lane.queued_items

    def _hold_until(self, lane: _Lane, now: float) -> float | None:
        """When a thread should stop waiting for a fuller batch of ``lane``; None: run now."""
        if self._closed or self._collected(lane, now):
            return None
        oldest = self._oldest(lane)
        if oldest is None:
            return None
        return self._wait_end(lane, oldest, oldest.enqueued + lane.policy.max_delay_s, now)

    @staticmethod
    def _wait_end(lane: _Lane, oldest: _Work, until: float, now: float) -> float | None:
        """``until``, never past the oldest request's latest start; None when that has come."""
        if lane.policy.deadline_admission:
            until = min(until, oldest.deadline - lane.estimate)
        return until if until > now else None

    def _gather_until(self, lane: _Lane, now: float) -> float | None:
        """Default path: when a free thread stops waiting for more of ``lane``'s trickling requests
        (see _GATHER_CAP_S); None: run now. A wait that ends is scored for the pay-off rule."""
        if lane.gathered_from < 0:
            if lane.probe_in > 0:
                lane.probe_in -= 1
            if not lane.may_gather():
                return None
        until = self._gather_limit(lane, now)
        if until is None:
            if lane.gathered_from >= 0:
                lane.gathered(lane.queued_items)
            return None
        if lane.gathered_from < 0:
            lane.gathered_from = lane.queued_items
        return until

    def _gather_limit(self, lane: _Lane, now: float) -> float | None:
        if self._closed or self._batch_ready(lane):
            return None
        oldest = self._oldest(lane)
        if oldest is None:
            return None
        until = min(lane.arrived + _GATHER_GAPS * lane.spacing, oldest.enqueued + _GATHER_CAP_S)
        return self._wait_end(lane, oldest, until, now)

    def _next_tenant(self, lane: _Lane, group: Any, items: int, taken: dict[str, int]) -> _Tenant | None:
        """The queue whose account is furthest behind (then the oldest head) that can join the call."""
        best: _Tenant | None = None
        best_key = (0.0, 0.0)
        for tenant in lane.active:
            works = tenant.works
            while works and works[0].state == _GONE:
                works.popleft()
            if not works or (group is not _NO_GROUP and tenant.group != group):
                continue
            head = works[0]
            if items and items + head.size > lane.max_batch_size:
                continue
            account = tenant.account
            if self._tenant_caps and not self._tenant_ready(account, taken.get(account.name, 0)):
                continue
            key = (account.vpass, head.enqueued)
            if best is None or key < best_key:
                best, best_key = tenant, key
        return best

    def _fill(self, lane: _Lane, now: float) -> _Taken:
        works: list[_Work] = []
        dropped: list[_Work] = []
        left = 0
        items = 0
        group: Any = _NO_GROUP
        taken: dict[str, int] = {}
        admission = lane.policy.deadline_admission
        while items < lane.max_batch_size:
            tenant = self._next_tenant(lane, group, items, taken)
            if tenant is None:
                break
            work = tenant.works.popleft()
            self._leave_queue(work)
            left += 1
            if work.future.done():  # the client went away
                continue
            if admission and not work.probe and now + lane.estimate > work.deadline:
                dropped.append(work)
                continue
            work.state = _STARTED
            works.append(work)
            items += work.size
            group = work.group
            account = tenant.account
            lane.vtime = account.vpass
            account.vpass += work.size / account.share.weight
            taken[account.name] = taken.get(account.name, 0) + 1
        kept: list[_Tenant] = []
        for tenant in lane.active:
            if tenant.works:
                kept.append(tenant)
            else:  # queues are keyed by request parameters too: do not keep one per value forever
                del lane.tenants[(tenant.account.name, tenant.group)]
        lane.active = kept
        for name, count in taken.items():
            self._tenant_running[name] = self._tenant_running.get(name, 0) + count
        charged = 0.0
        overlaps = -1
        if works:
            if lane.running_since:
                lane.overlaps += 1
            else:
                overlaps = lane.overlaps
            lane.running_since = (*lane.running_since, now)
            lane.running_items += items
            self._vtime = lane.vpass
            charged = lane.estimate / lane.policy.weight
            lane.vpass += charged
        return _Taken(lane, works, dropped, left, now, charged, overlaps)

    def _take(self) -> _Taken | None:
        """Block until a lane is ready; take one call's worth of its work (maybe only drops)."""
        with self._cond:
            while True:
                now = self._clock()
                lane, wake = self._pick_lane(now)
                if lane is None:
                    if self._closed:
                        return None
                    self._idle += 1
                    if wake is not None and not self._watcher:
                        # One idle thread watches for a held lane's wait to end (a stuck call).
                        self._watcher = True
                        self._cond.wait(max(wake - now, _WATCH_FLOOR_S))
                        self._watcher = False
                    else:
                        self._cond.wait()
                    self._idle -= 1
                    continue
                if lane.policy.max_delay_s > 0.0:
                    until = self._hold_until(lane, now)
                    if until is None:
                        self._learn(lane, now)
                else:
                    until = self._gather_until(lane, now)
                if until is not None:
                    lane.collecting = True
                    lane.cond.wait(until - now)
                    lane.collecting = False
                    continue
                taken = self._fill(lane, now)
                if self._idle and any(self._ready(other, now) for other in self._listed):
                    # Work this thread left behind (max_batch_size, a lane cap) goes to an idle thread.
                    self._cond.notify()
                return taken

    def _execute(self, works: list[_Work]) -> Sequence[Any] | BaseException:
        """Run one group of one version's requests as one model call in this slot (no lock held)."""
        try:
            return works[0].target.run_group([work.call for work in works])
        except InferdError as exc:
            return exc
        except BaseException as exc:  # a bug in the pipeline wrapper itself; never kill the thread
            return InferenceError(f"internal error while running the model: {type(exc).__name__}")

    def _finish(self, taken: _Taken, elapsed: float, cpu: float) -> None:
        lane = taken.lane
        with self._lock:
            since = list(lane.running_since)
            since.remove(taken.started)
            lane.running_since = tuple(since)
            lane.running_items -= sum(work.size for work in taken.works)
            # A call stopped at its deadline measured the deadline, not the model: no sample.
            if not any(work.stopped for work in taken.works):
                # A call that overran its timeout says the model is slow, not by how much it would
                # overrun the next time: capped, one such call cannot refuse the version for minutes.
                cap = max(
                    (work.timeout_s for work in taken.works if not work.client_deadline), default=elapsed
                )
                lane.observe(min(elapsed, cap))
                if taken.overlaps == lane.overlaps and elapsed > 0.0:
                    lane.observe_cpu(min(1.0, cpu / elapsed))
            # Charge the measured device time, not the estimate charged at the start.
            lane.vpass += elapsed / lane.policy.weight - taken.charged
            for work in taken.works:
                count = self._tenant_running[work.tenant] - 1
                if count:
                    self._tenant_running[work.tenant] = count
                else:
                    del self._tenant_running[work.tenant]

    def _worker_loop(self) -> None:
        metrics = self._metrics
        while True:
            taken = self._take()
            if taken is None:
                return
            if taken.left_queue:
                metrics.queued_add(-taken.left_queue)
            works = taken.works
            outcomes: Sequence[Any] | BaseException = ()
            finished = 0.0
            if works:
                metrics.inflight_add(len(works))
                cpu_started = self._cpu_clock()
                try:
                    metrics.step(works[0].target, sum(work.size for work in works))
                    outcomes = self._execute(works)
                finally:
                    metrics.inflight_add(-len(works))
                    finished = self._clock()
                    self._finish(taken, finished - taken.started, self._cpu_clock() - cpu_started)
            elif not taken.dropped:
                continue
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._deliver, works, outcomes, taken.dropped, finished)
                except RuntimeError:  # loop closed between the check and the call
                    return
                if works and taken.lane.batches_while_busy:
                    # This thread's next call would take the GIL at once and keep these answers from the
                    # loop for a switch interval: let the loop hand them out first.
                    time.sleep(0)

    def collecting(self) -> int:
        """How many versions a thread is holding for a fuller batch right now."""
        with self._lock:
            return sum(1 for lane in self._listed if lane.collecting)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            for lane in self._listed:
                lane.cond.notify_all()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


_NO_GROUP = object()
