"""Sleepy model: sleeps as long as each item asks, to demonstrate execution timeouts."""

from __future__ import annotations

import time
from typing import Any

MAX_SLEEP_S = 30.0


def sleep_seconds(item: dict[str, Any]) -> float:
    """The time an item asks to sleep, clamped to [0, MAX_SLEEP_S]."""
    requested = float(item.get("sleep_s", 0) or 0)
    return min(max(requested, 0.0), MAX_SLEEP_S)


class Sleepy:
    """For each item ``{"sleep_s": s}`` sleeps ``s`` seconds, then returns ``{"slept": s}``."""

    def predict(self, batch: list[dict[str, Any]]) -> list[dict[str, float]]:
        outputs: list[dict[str, float]] = []
        for item in batch:
            seconds = sleep_seconds(item)
            time.sleep(seconds)
            outputs.append({"slept": seconds})
        return outputs
