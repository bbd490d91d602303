"""Keeps the models of every process that shares a job store at the same repository generation.

A reload request (``POST /v1/admin/models/reload``, ``inferd models reload``, SIGHUP) reloads the
process that got it and bumps the generation in the store; every other process (the other ``--workers``
processes, other API replicas, ``inferd worker``) polls the generation and reloads when it moved. A
worker about to run a job for a version it does not know checks the generation first, so a job is never
failed only because its worker had not reloaded yet.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from inferd.core.registry import ModelRegistry
from inferd.jobs.store import JobStore

logger = logging.getLogger("inferd.reload")


class RepositorySync:
    def __init__(
        self, *, registry: ModelRegistry, reload: Callable[[], Awaitable[dict[str, Any]]], store: JobStore
    ) -> None:
        """``reload``: this process's own rescan (the data plane's, one at a time)."""
        self._registry = registry
        self._reload = reload
        self._store = store
        self._generation: int | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """At start-up the models were just loaded from disk: this process is at the store's generation."""
        self._generation = await self._store.repository_generation()

    async def reload_everywhere(self) -> dict[str, Any]:
        """Reload this process now and make every other process reload; the summary of this one."""
        async with self._lock:
            # Bump first: a reload requested elsewhere after this bump has a higher generation, so
            # this process reloads again for it instead of skipping it.
            generation = await self._store.bump_repository_generation()
            summary = await self._reload()
            self._generation = generation
        return summary

    async def catch_up(self) -> bool:
        """Reload when another process requested a reload since this one last did; True if it did."""
        generation = await self._store.repository_generation()
        if generation == self._generation:
            return False
        async with self._lock:
            if generation == self._generation:
                return False
            summary = await self._reload()
            logger.info("models reloaded for repository generation %d: %s", generation, _brief(summary))
            self._generation = generation
        return True

    def knows(self, model: str, version: str) -> bool:
        entry = self._registry.models.get(model)
        return entry is not None and version in entry.versions


def _brief(summary: dict[str, Any]) -> str:
    fields = ("added", "reloaded", "removed", "failed")
    return (
        "; ".join(f"{field} {', '.join(summary[field])}" for field in fields if summary[field]) or "no change"
    )
