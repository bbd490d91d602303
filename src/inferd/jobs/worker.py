"""The job worker: claims pending jobs, runs them through the data plane, renews leases.

One claiming loop per process: it claims as many jobs as it has free slots in one statement, and
waits for a store notification (LISTEN/NOTIFY on PostgreSQL, an in-process event on SQLite) or the
poll interval only when there is nothing to claim.

A slot is free once the model is done with its job, while the outcome is still being written: the
next claim overlaps that write instead of waiting for it (claim, run and finish of one batch took
turns, so each worker ran at the pace of two statements plus the model). The job stays held (its
lease renewed) until its outcome is written, and a worker holds at most ``2 x concurrency`` jobs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable
from typing import Any

from inferd.core.errors import StoreUnavailableError
from inferd.jobs.models import Job
from inferd.jobs.service import JobService

logger = logging.getLogger("inferd.worker")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobWorker:
    def __init__(
        self,
        *,
        service: JobService,
        concurrency: int,
        lease_s: float,
        poll_interval_s: float = 1.0,
        worker_id: str | None = None,
    ) -> None:
        self.service = service
        self.concurrency = concurrency
        self.lease_s = lease_s
        self.poll_interval_s = poll_interval_s
        self.worker_id = worker_id or new_worker_id()
        self._running: dict[str, asyncio.Task[None]] = {}  # held: executing, or the outcome being written
        self._executing = 0
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()

    @property
    def running_jobs(self) -> list[str]:
        """The jobs this worker holds the lease of."""
        return list(self._running)

    def _free(self) -> int:
        return min(self.concurrency - self._executing, 2 * self.concurrency - len(self._running))

    async def run(self) -> None:
        """Claim and execute until :meth:`stop`; never returns while jobs are held."""
        renewer = asyncio.create_task(self._renew_leases())
        try:
            while not self._stopping.is_set():
                free = self._free()
                if free <= 0:
                    await self._wait(self._slot_freed)
                    continue
                try:
                    jobs = await self.service.mark_running(
                        worker_id=self.worker_id, limit=free, lease_s=self.lease_s
                    )
                except StoreUnavailableError as exc:
                    logger.warning("claiming jobs: %s; retrying in %.1fs", exc.message, self.poll_interval_s)
                    await self._sleep(self.poll_interval_s)
                    continue
                except Exception:
                    logger.exception("claiming jobs failed; retrying in %.1fs", self.poll_interval_s)
                    await self._sleep(self.poll_interval_s)
                    continue
                for job in jobs:
                    self._start(job)
                if not jobs:
                    await self._wait_for_work()
        finally:
            renewer.cancel()

    def _start(self, job: Job) -> None:
        self._executing += 1
        task = asyncio.create_task(self._execute(job), name=f"job-{job.id}")
        self._running[job.id] = task

    async def _execute(self, job: Job) -> None:
        executing = True

        def executed() -> None:
            nonlocal executing
            if executing:
                executing = False
                self._executing -= 1
                self._slot_freed.set()

        try:
            await self.service.run(job, worker_id=self.worker_id, executed=executed)
        except StoreUnavailableError as exc:
            # The lease expires and another attempt runs the job once the store is back.
            logger.warning("job %s: recording the outcome failed: %s", job.id, exc.message)
        except Exception:
            logger.exception("job %s: recording the outcome failed", job.id)
        finally:
            executed()
            self._running.pop(job.id, None)
            self._slot_freed.set()

    async def _wait_for_work(self) -> None:
        await self._until_stopped(self.service.store.wait_for_work(self.poll_interval_s))

    async def _wait(self, event: asyncio.Event) -> None:
        event.clear()
        if self._free() > 0:
            return
        await self._until_stopped(event.wait())

    async def _sleep(self, seconds: float) -> None:
        await self._until_stopped(asyncio.sleep(seconds))

    async def _until_stopped(self, awaitable: Awaitable[Any]) -> None:
        """Await ``awaitable``, or return early when :meth:`stop` is called."""
        waiter = asyncio.ensure_future(awaitable)
        stopper = asyncio.create_task(self._stopping.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()

    async def _renew_leases(self) -> None:
        interval = max(0.05, self.lease_s / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.service.renew(self.running_jobs, worker_id=self.worker_id, lease_s=self.lease_s)
            except StoreUnavailableError as exc:
                logger.warning("renewing leases: %s", exc.message)
            except Exception:
                logger.exception("renewing leases failed")

    def stop(self) -> None:
        """Stop claiming new jobs."""
        self._stopping.set()

    async def drain(self, grace_s: float) -> None:
        """After stop(): let running jobs finish for up to ``grace_s``, then give the rest back."""
        tasks = list(self._running.values())
        if tasks:
            logger.info("waiting up to %.0fs for %d running job(s)", grace_s, len(tasks))
            renewer = asyncio.create_task(self._renew_leases())
            try:
                await asyncio.wait(tasks, timeout=grace_s)
            finally:
                renewer.cancel()
        leftover = self.running_jobs
        if leftover:
            released = await self.service.release(leftover, worker_id=self.worker_id)
            logger.warning("released %d unfinished job(s) back to pending", released)
            cancelled = list(self._running.values())
            for task in cancelled:
                task.cancel()
            # Wait for the cancellations to land, so no task still runs (or records) once drain()
            # returns and the caller closes the store; bounded in case a task swallows it.
            await asyncio.wait(cancelled, timeout=1.0)
