"""Coalescing concurrent store writes into one statement."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from inferd.core.errors import StoreUnavailableError

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """Runs concurrent calls as one batched call: one statement and one commit (one fsync) for many
    jobs. No added latency: the first item is written at once; items that arrive while that write is
    in flight go together in the next. Each caller returns when its own item is written."""

    def __init__(self, write: Callable[[list[T]], Awaitable[list[R]]]) -> None:
        self._write = write
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._writing = False
        self._drainer: asyncio.Task[None] | None = None  # a reference, so the task cannot be collected

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queued.append((item, future))
        if not self._writing:
            self._writing = True
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    results = await self._write([item for item, _ in batch])
                except Exception as exc:
                    if len(batch) == 1 or isinstance(exc, StoreUnavailableError):
                        # Unreachable fails every item alike; trying each alone would only wait longer.
                        for _, future in batch:
                            _reject(future, exc)
                        continue
                    # One item the store refuses (e.g. a string PostgreSQL cannot hold) must not fail
                    # the others that happened to share its statement: the batched write is
                    # all-or-nothing, so writing each alone cannot apply any of them twice.
                    for item, future in batch:
                        try:
                            [result] = await self._write([item])
                        except Exception as single:
                            _reject(future, single)
                        else:
                            _resolve(future, result)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    _resolve(future, result)
        finally:
            self._writing = False


def _resolve(future: asyncio.Future[R], result: R) -> None:
    if not future.done():  # done: the caller went away (cancelled)
        future.set_result(result)


def _reject(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
