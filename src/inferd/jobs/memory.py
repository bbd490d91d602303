"""In-memory connector: every named query as a Python function over a dict of rows.

For tests of the service and the worker: no database, no thread, no wall clock. It keeps the semantics the contract suite checks on SQLite and PostgreSQL:
conditional updates, unique keys, JSON round trips (values come back as the databases return them)
and the same refusals. One process only: nothing is shared or kept across restarts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from inferd.core.errors import ConflictError, InvalidInputError
from inferd.jobs.connector import Params, Query, Row
from inferd.jobs.migrations import COLUMN_KINDS, JOB_COLUMNS, KEY_COLUMNS, Kind
from inferd.jobs.models import JobStatus
from inferd.jobs.store import JobStore

PENDING, RUNNING = JobStatus.PENDING.value, JobStatus.RUNNING.value
CANCELLED, FAILED = JobStatus.CANCELLED.value, JobStatus.FAILED.value
TERMINAL = {status.value for status in JobStatus if status.terminal}


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _stored(name: str, value: Any) -> Any:
    """A value as a database would give it back."""
    if value is None:
        return None
    kind = COLUMN_KINDS.get(name)
    if kind is Kind.JSON:
        try:
            return orjson.loads(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY))
        except orjson.JSONEncodeError as exc:
            raise InvalidInputError(f"job data is not JSON-serializable: {exc}") from exc
    if isinstance(value, datetime):
        return _utc(value)
    return value


def _order(row: Row) -> tuple[datetime, str]:
    return row["created_at"], row["id"]


class MemoryConnector:
    """The jobs of this process, in a dict."""

    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.generation = 0  # the model repository generation
        self.keys: dict[str, Row] = {}
        self.next_turns: dict[str, float] = {}  # fair claims: each tenant's next turn
        self.clock = 0.0  # and the turn of the latest job claimed
        self._open = False
        self._queries: dict[Query, Callable[[dict[str, Any]], tuple[list[Row], int]]] = {
            Query.PING: lambda p: ([{"ok": 1}], 1),
            Query.INSERT_JOBS: self._insert,
            Query.INSERT_JOB_KEYED: self._insert_keyed,
            Query.INSERT_JOBS_KEYED: self._insert_keyed_returning,
            Query.GET_JOB: self._get,
            Query.GET_JOB_BY_KEY: self._get_by_key,
            Query.LIST_JOBS: self._list,
            Query.LIST_JOBS_AFTER: self._list,
            Query.PENDING_COUNTS: self._pending_counts,
            Query.CLAIM: self._claim,
            Query.RENEW_LEASES: self._renew,
            Query.FINISH_JOBS: self._finish,
            Query.RETRY_LATER: self._retry_later,
            Query.RELEASE: self._release,
            Query.CANCEL: self._cancel,
            Query.DELETE_FINISHED: self._delete_finished,
            Query.PRUNE_TURNS: self._prune_turns,
            Query.REPOSITORY_GENERATION: lambda p: ([{"generation": self.generation}], 1),
            Query.BUMP_REPOSITORY_GENERATION: self._bump_generation,
            Query.INSERT_KEY: self._insert_key,
            Query.LIST_KEYS: self._list_keys,
            Query.REVOKE_KEY: self._revoke_key,
            Query.TOUCH_KEYS: self._touch_keys,
        }

    async def open(self, on_notification: Callable[[], None]) -> None:
        self.applied_migrations: list[int] = []  # no schema
        self._open = True

    async def close(self) -> None:
        self._open = False

    def _run(self, query: Query, params: Params) -> tuple[list[Row], int]:
        if not self._open:
            raise RuntimeError("the in-memory job store is not open")
        values = {name: _stored(name, value) for name, value in params.items()}
        rows, count = self._queries[query](values)
        return [dict(row) for row in rows], count  # copies: callers never alias stored rows

    async def fetch(self, query: Query, params: Params) -> list[Row]:
        return self._run(query, params)[0]

    async def execute(self, query: Query, params: Params) -> int:
        return self._run(query, params)[1]

    async def fetch_batch(self, query: Query, rows: Sequence[Params], params: Params) -> list[Row]:
        saved = {job_id: dict(row) for job_id, row in self.rows.items()}
        found: list[Row] = []
        try:
            for row in rows:
                found += self._run(query, {**params, **row})[0]
        except BaseException:
            self.rows = saved  # all or nothing, like the databases' transaction
            raise
        return found

    def announce_work(self) -> None:
        """Nobody else to tell: the store already woke this process."""

    # -- the queries ------------------------------------------------------------------------------

    def _bump_generation(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        self.generation += 1
        return [{"generation": self.generation}], 1

    def _insert(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        if p["id"] in self.rows:
            raise ConflictError(f"the job store refused a duplicate: job id {p['id']!r} exists")
        if p["idempotency_key"] is not None and self._get_by_key(p)[0]:
            raise ConflictError("the job store refused a duplicate idempotency key")
        self.rows[p["id"]] = {column: p[column] for column in JOB_COLUMNS}
        return [], 1

    def _insert_keyed(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        if self._get_by_key(p)[0]:
            return [], 0
        return self._insert(p)

    def _insert_keyed_returning(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        _, count = self._insert_keyed(p)
        return ([{"id": p["id"]}] if count else []), count

    def _get(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        row = self.rows.get(p["id"])
        if row is None or (p["tenant"] is not None and row["tenant"] != p["tenant"]):
            return [], 0
        return [row], 1

    def _get_by_key(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        rows = [
            row
            for row in self.rows.values()
            if row["tenant"] == p["tenant"] and row["idempotency_key"] == p["idempotency_key"]
        ]
        return rows, len(rows)

    def _list(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        after = (p["after_created"], p["after_id"]) if "after_created" in p else None
        rows = sorted(
            (
                row
                for row in self.rows.values()
                if row["tenant"] == p["tenant"]
                and p["status"] in (None, row["status"])
                and p["model"] in (None, row["model"])
                and (after is None or _order(row) < after)
            ),
            key=_order,
            reverse=True,
        )[: p["limit"]]
        return rows, len(rows)

    def _pending_counts(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        counts: dict[tuple[str, str], int] = {}
        for row in self.rows.values():
            if row["status"] == PENDING:
                key = (row["model"], row["version"])
                counts[key] = counts.get(key, 0) + 1
        found = [{"model": model, "version": version, "count": n} for (model, version), n in counts.items()]
        return found, len(found)

    def _claim(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        now, limit = p["now"], p["limit"]
        expired = sorted(
            (r for r in self.rows.values() if r["status"] == RUNNING and r["lease_expires_at"] < now),
            key=_order,
        )[:limit]
        rerun = []
        for row in expired:
            if row["cancel_requested"]:
                row.update(status=CANCELLED, finished_at=now, lease_owner=None, lease_expires_at=None)
            elif row["attempts"] >= row["max_attempts"]:
                row.update(
                    status=FAILED,
                    finished_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    error_code="inference_error",
                    error_message=p["lost"],
                )
            else:
                rerun.append(row)
        by_tenant: dict[str, list[Row]] = {}
        for row in self.rows.values():
            if row["status"] == PENDING and row["run_after"] <= now and not row["cancel_requested"]:
                by_tenant.setdefault(row["tenant"], []).append(row)
        # Re-runs have no turn and come first; a tenant's k-th next job (from 0) has the turn
        # start + k / weight, where start is its next turn, or the clock where that is behind.
        ranked: list[tuple[float, datetime, str, Row]] = [(-math.inf, *_order(row), row) for row in rerun]
        starts: dict[str, tuple[float, float]] = {}
        for tenant, rows in by_tenant.items():
            weight = float(p["weights"].get(tenant, p["default_weight"]))
            start = max(self.next_turns.get(tenant, self.clock), self.clock)
            starts[tenant] = start, weight
            rows.sort(key=lambda r: (-r["priority"], *_order(r)))
            ranked += [(start + rank / weight, *_order(row), row) for rank, row in enumerate(rows[:limit])]
        chosen = sorted(ranked, key=lambda item: item[:3])[:limit]
        taken: dict[str, int] = {}
        for turn, *_, row in chosen:
            if turn > -math.inf:
                taken[row["tenant"]] = taken.get(row["tenant"], 0) + 1
                self.clock = max(self.clock, turn)
        for tenant, count in taken.items():
            start, weight = starts[tenant]
            self.next_turns[tenant] = start + count / weight
        picked = [row for *_, row in chosen]
        for row in picked:
            row.update(
                status=RUNNING,
                attempts=row["attempts"] + 1,
                lease_owner=p["worker"],
                lease_expires_at=p["expires"],
                started_at=now,
            )
        return picked, len(picked)

    def _held(self, job_id: str, worker: str) -> Row | None:
        row = self.rows.get(job_id)
        if row is None or row["status"] != RUNNING or row["lease_owner"] != worker:
            return None
        return row

    def _renew(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        held = [row for job_id in set(p["ids"]) if (row := self._held(job_id, p["worker"])) is not None]
        for row in held:
            row["lease_expires_at"] = p["expires"]
        return [], len(held)

    def _finish(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        row = self._held(p["id"], p["worker"])
        if row is None or row["attempts"] != p["attempt"]:
            return [], 0
        cancelled = row["cancel_requested"]
        row.update(
            status=CANCELLED if cancelled else p["status"],
            finished_at=p["now"],
            outputs=None if cancelled else p["outputs"],
            error_code=None if cancelled else p["error_code"],
            error_message=None if cancelled else p["error_message"],
            lease_owner=None,
            lease_expires_at=None,
        )
        return [{"id": row["id"], "status": row["status"], "finished_at": row["finished_at"]}], 1

    def _retry_later(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        row = self._held(p["id"], p["worker"])
        if row is None or row["attempts"] != p["attempt"]:
            return [], 0
        cancelled = row["cancel_requested"]
        row.update(
            status=CANCELLED if cancelled else PENDING,
            finished_at=p["now"] if cancelled else None,
            run_after=p["run_after"],
            error_code=p["error_code"],
            error_message=p["error_message"],
            lease_owner=None,
            lease_expires_at=None,
        )
        return [row], 1

    def _release(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        held = [row for job_id in set(p["ids"]) if (row := self._held(job_id, p["worker"])) is not None]
        for row in held:
            cancelled = row["cancel_requested"]
            row.update(
                status=CANCELLED if cancelled else PENDING,
                attempts=row["attempts"] if cancelled else row["attempts"] - 1,
                finished_at=p["now"] if cancelled else None,
                lease_owner=None,
                lease_expires_at=None,
            )
        return [], len(held)

    def _cancel(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        row = self.rows.get(p["id"])
        if row is None or p["tenant"] not in (None, row["tenant"]) or row["status"] not in (PENDING, RUNNING):
            return [], 0
        if row["status"] == PENDING:
            row.update(status=CANCELLED, finished_at=p["now"])
        row["cancel_requested"] = True
        return [row], 1

    def _delete_finished(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        doomed = [
            job_id
            for job_id, row in self.rows.items()
            if row["status"] in TERMINAL
            and row["finished_at"] is not None
            and row["finished_at"] < p["cutoff"]
        ]
        for job_id in doomed:
            del self.rows[job_id]
        return [], len(doomed)

    def _prune_turns(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        kept = {tenant: turn for tenant, turn in self.next_turns.items() if turn > self.clock}
        pruned = len(self.next_turns) - len(kept)
        self.next_turns = kept
        return [], pruned

    def _insert_key(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        if p["id"] in self.keys or any(key["digest"] == p["digest"] for key in self.keys.values()):
            raise ConflictError("the job store refused a duplicate API key")
        self.keys[p["id"]] = {column: p[column] for column in KEY_COLUMNS}
        return [], 1

    def _list_keys(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        rows = sorted(
            (key for key in self.keys.values() if key["revoked_at"] is None),
            key=lambda key: (key["created_at"], key["id"]),
        )
        return rows, len(rows)

    def _revoke_key(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        key = self.keys.get(p["id"])
        if key is None or key["revoked_at"] is not None:
            return [], 0
        key["revoked_at"] = p["now"]
        return [key], 1

    def _touch_keys(self, p: dict[str, Any]) -> tuple[list[Row], int]:
        touched = [self.keys[key_id] for key_id in set(p["ids"]) if key_id in self.keys]
        for key in touched:
            key["last_used_at"] = p["now"]
        return [], len(touched)


def memory_store() -> JobStore:
    """A (not yet opened) job store in this process's memory."""
    return JobStore(MemoryConnector())
