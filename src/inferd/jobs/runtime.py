"""Runs the job machinery of one process: store, worker, queue-depth refresh, retention janitor (finished
jobs past their ttl, tenant turns behind the clock)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from inferd.core.errors import StoreUnavailableError
from inferd.core.tenancy import RuntimeKeys
from inferd.jobs.models import utcnow
from inferd.jobs.repository_sync import RepositorySync
from inferd.jobs.service import JobService
from inferd.jobs.store import JobStore
from inferd.jobs.worker import JobWorker

logger = logging.getLogger("inferd.jobs")

# The stores report their own failures fast, as errors (PostgreSQL waits at most its answer timeout
# for a connection, SQLite its busy timeout for a lock), so this bound only catches a store that hangs
# without failing. It must outlast a healthy store's slow answer on a loaded machine (a commit's fsync
# on a busy disk, a starved thread): at 2 s a healthy replica was seen to report itself not ready.
_PING_TIMEOUT_S = 10.0


# The job_queue_depth refresh counts the pending jobs, which takes longer as the backlog grows (about
# 30 ms for 100,000 pending jobs on PostgreSQL, in every process, every 0.5 s: a fifth of the
# database's CPU in the bulk benchmark); past this share of the time it waits longer between counts
# (100,000 pending: about every 1.5 s; the gauge moves with this process's own writes in between).
DEPTH_REFRESH_MAX_SHARE = 0.02


async def _every(
    interval_s: float,
    action: Callable[[], Awaitable[Any]],
    what: str,
    *,
    max_share: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> None:
    """Run ``action`` every ``interval_s``, or less often where it would otherwise take more than
    ``max_share`` of the time (its last run's duration decides)."""
    unavailable = False  # an outage is logged when it starts and when it ends, not every interval
    while True:
        started = clock()
        try:
            await action()
        except StoreUnavailableError as exc:
            if not unavailable:
                logger.warning("%s: %s", what, exc.message)
            unavailable = True
        except Exception:
            logger.exception("%s failed; trying again in %.1fs", what, interval_s)
        else:
            if unavailable:
                logger.warning("%s: the job store answers again", what)
            unavailable = False
        elapsed = clock() - started
        await sleep(max(interval_s, elapsed * (1 / max_share - 1)))


class JobRuntime:
    def __init__(
        self,
        *,
        store: JobStore,
        service: JobService,
        worker: JobWorker | None,
        repository: RepositorySync,
        job_ttl_s: float,
        janitor_interval_s: float,
        depth_refresh_s: float = 0.5,
        repository_poll_s: float = 0.5,
        shutdown_grace_s: float = 20.0,
        keys: RuntimeKeys | None = None,
        keys_refresh_s: float = 0.5,
    ) -> None:
        self.store = store
        self.service = service
        self.worker = worker
        self.repository = repository
        self._job_ttl_s = job_ttl_s
        self._janitor_interval_s = janitor_interval_s
        self._depth_refresh_s = depth_refresh_s
        self._repository_poll_s = repository_poll_s
        self._shutdown_grace_s = shutdown_grace_s
        self.keys = keys
        self._keys_refresh_s = keys_refresh_s
        self._tasks: list[asyncio.Task[Any]] = []
        self._worker_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.store.open()
        await self.repository.start()
        self._tasks.append(
            asyncio.create_task(
                _every(self._repository_poll_s, self.repository.catch_up, "model repository generation check")
            )
        )
        if self.keys is not None:
            await self.refresh_keys()  # before serving: a store key works from the first request
            self._tasks.append(
                asyncio.create_task(_every(self._keys_refresh_s, self.refresh_keys, "API key refresh"))
            )
        self._tasks.append(
            asyncio.create_task(
                _every(
                    self._depth_refresh_s,
                    self.service.refresh_queue_depth,
                    "job_queue_depth refresh",
                    max_share=DEPTH_REFRESH_MAX_SHARE,
                )
            )
        )
        self._tasks.append(asyncio.create_task(_every(self._janitor_interval_s, self._tidy, "job retention")))
        if self.worker is not None:
            self._worker_task = asyncio.create_task(self.worker.run())

    async def stop(self) -> None:
        """Stop claiming, finish or release running jobs within the grace period, close the store."""
        if self.worker is not None and self._worker_task is not None:
            self.worker.stop()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._worker_task, timeout=5)
            await self.worker.drain(self._shutdown_grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.store.close()

    async def _tidy(self) -> None:
        await self.service.delete_expired(self._job_ttl_s)
        await self.store.prune_turns()

    async def refresh_keys(self) -> None:
        """Run-time keys: record which were used, then take the store's current set (new, revoked
        and expired keys reach this process within one refresh interval)."""
        assert self.keys is not None
        used = self.keys.take_used()
        if used:
            await self.store.touch_keys(used, now=utcnow())
        self.keys.replace(await self.store.list_keys())

    async def readiness(self) -> list[str]:
        try:
            if await asyncio.wait_for(self.store.ping(), timeout=_PING_TIMEOUT_S):
                return []
        except Exception as exc:
            return [f"job store does not answer: {type(exc).__name__}: {exc}"]
        return ["job store does not answer"]
