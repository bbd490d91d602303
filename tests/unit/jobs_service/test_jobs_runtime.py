"""The job runtime's periodic tasks: how often they run."""

from __future__ import annotations

import asyncio

import pytest

from inferd.jobs.runtime import _every


def test_a_periodic_task_that_takes_long_waits_longer_between_runs() -> None:
    """The queue-depth count grows with the backlog; it is kept under ``max_share`` of the time."""
    now = [0.0]
    pauses: list[float] = []
    durations = iter([0.001, 0.1, 0.004])

    async def count() -> None:
        now[0] += next(durations)

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 3:
            raise asyncio.CancelledError
        now[0] += seconds

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_every(0.5, count, "count", max_share=0.02, clock=lambda: now[0], sleep=sleep))
    # 1 ms and 4 ms counts keep the interval; a 100 ms count is followed by 49 x 100 ms.
    assert pauses == [0.5, pytest.approx(4.9), 0.5]
