"""What one server process of ``serve --workers N`` takes of the server's limits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inferd.bootstrap import ProcessShare, build_rate_limiter
from inferd.core.errors import RateLimitedError
from inferd.core.settings import load_settings


@pytest.mark.parametrize(("total", "count"), [(4, 2), (5, 2), (1, 3), (0, 2), (100, 7)])
def test_parts_add_up_to_the_total(total: int, count: int) -> None:
    parts = [ProcessShare(index=i, count=count, metrics_dir=Path("/tmp")).part(total) for i in range(count)]
    assert sum(parts) == total
    assert max(parts) - min(parts) <= 1


def test_each_process_enforces_its_share_of_a_rate_limit() -> None:
    settings = load_settings(
        flags={"rate_limit": "10/s", "tenants": {"big": {"rate_limit": "40/s"}}}, environ={}
    )
    limiter = build_rate_limiter(settings, share=0.5, clock=lambda: 0.0)  # no refill during the test
    for _ in range(5):
        limiter.acquire("acme")
    with pytest.raises(RateLimitedError):
        limiter.acquire("acme")
    for _ in range(20):
        limiter.acquire("big")
    with pytest.raises(RateLimitedError):
        limiter.acquire("big")


def test_workers_auto_is_the_usable_cores() -> None:
    settings = load_settings(environ={"INFERD_WORKERS": "auto"})
    assert settings.workers == len(os.sched_getaffinity(0))
    assert load_settings(flags={"workers": "3"}, environ={}).workers == 3
