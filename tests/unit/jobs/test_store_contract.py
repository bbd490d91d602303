"""The JobStore contract, run against every store (see ``backend`` in conftest.py)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from psycopg_pool import PoolClosed, PoolTimeout

from inferd.core.errors import InvalidInputError, StoreUnavailableError
from inferd.core.tenancy import EQUAL_WEIGHTS, TenantWeights, key_digest
from inferd.jobs.connector import Query
from inferd.jobs.memory import MemoryConnector
from inferd.jobs.models import Job, JobError, JobStatus
from inferd.jobs.postgres import is_unreachable, postgres_store
from inferd.jobs.postgres_sql import QUERIES as POSTGRES_QUERIES
from inferd.jobs.sqlite import SQLiteConnector
from inferd.jobs.sqlite_sql import QUERIES as SQLITE_QUERIES
from inferd.jobs.store import CancelResult, Finished, FinishRequest, JobStore, encode_cursor

JobFactory = Callable[..., Job]
StoreFactory = Callable[[], Awaitable[JobStore]]

BASE = datetime(2024, 1, 1, tzinfo=UTC)  # the epoch conftest's make_job counts from
NOW = BASE + timedelta(hours=1)  # after every job make_job creates by default
LEASE_S = 30.0
LOST_MESSAGE = "worker lost while running the job (lease expired) and no attempts are left"


async def claim_one(store: JobStore, worker_id: str = "w1", now: datetime = NOW) -> Job:
    jobs = await store.claim(worker_id=worker_id, limit=1, lease_s=LEASE_S, now=now)
    assert len(jobs) == 1
    return jobs[0]


async def quiesce(store: JobStore) -> None:
    """Let wake-ups already in flight (PostgreSQL notifications of earlier writes) land and be
    consumed, so a later wake-up is known to come from what the test does next."""
    await asyncio.sleep(0.1)
    await store.wait_for_work(0.01)


async def start_waiting(store: JobStore) -> asyncio.Task[None]:
    await quiesce(store)
    waiter = asyncio.create_task(store.wait_for_work(10.0))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    return waiter


# -- insert / get ------------------------------------------------------------------------------------


async def test_insert_and_get_round_trip_every_field(store: JobStore, make_job: JobFactory) -> None:
    full = make_job(
        inputs=[{"text": "héllo ✓", "nested": [1, 2.5, None, True, {"k": "v"}]}, -3, 0.1],
        batch=False,
        status=JobStatus.SUCCEEDED,
        attempts=2,
        max_attempts=5,
        timeout_s=2.5,
        started_at=BASE + timedelta(seconds=5, microseconds=123456),
        finished_at=BASE + timedelta(seconds=6, microseconds=7),
        lease_owner="worker-9",
        lease_expires_at=BASE + timedelta(seconds=35),
        cancel_requested=True,
        outputs=[{"label": "setosa", "p": [0.97, 0.02, 0.01]}],
        error=JobError("inference_error", "boom"),
        idempotency_key="key-1",
        request_hash="sha256:abc",
        parameters={"temperature": 0.2, "stop": ["\n"], "nested": {"k": [1, None]}},
    )
    minimal = make_job()

    for job in (full, minimal):
        result = await store.insert(job)
        assert result.created is True
        got = await store.get(job.id)
        assert got == job
        assert got is not None
        for stamp in (got.created_at, got.run_after, got.started_at, got.finished_at, got.lease_expires_at):
            assert stamp is None or stamp.utcoffset() == timedelta(0)


async def test_timestamps_in_other_zones_are_stored_as_the_same_instant(
    store: JobStore, make_job: JobFactory
) -> None:
    plus_two = timezone(timedelta(hours=2))
    job = make_job(created_at=(BASE + timedelta(hours=3)).astimezone(plus_two))
    await store.insert(job)
    got = await store.get(job.id)
    assert got is not None
    assert got.created_at == BASE + timedelta(hours=3)
    assert got.created_at.utcoffset() == timedelta(0)


async def test_get_is_tenant_scoped(store: JobStore, make_job: JobFactory) -> None:
    job = make_job(tenant="tenant-a")
    await store.insert(job)
    assert await store.get(job.id, tenant="tenant-a") == job
    assert await store.get(job.id, tenant="tenant-b") is None
    assert await store.get("no-such-job") is None
    assert await store.get("no-such-job", tenant="tenant-a") is None


async def test_idempotent_insert_returns_the_existing_job(store: JobStore, make_job: JobFactory) -> None:
    first = make_job(idempotency_key="k", request_hash="h1")
    again = make_job(idempotency_key="k", request_hash="h2")
    other_tenant = make_job(tenant="tenant-b", idempotency_key="k")

    assert (await store.insert(first)).created is True
    dup = await store.insert(again)
    assert dup.created is False
    assert dup.job == first  # the stored job, with its own request_hash, for the caller to compare
    assert await store.get(again.id) is None
    assert (await store.insert(other_tenant)).created is True

    unkeyed = [make_job(), make_job()]
    for job in unkeyed:
        assert (await store.insert(job)).created is True


async def test_concurrent_idempotent_inserts_create_one_job(
    store_factory: StoreFactory, make_job: JobFactory
) -> None:
    stores = [await store_factory(), await store_factory()]
    candidates = [make_job(idempotency_key="same") for _ in range(16)]
    results = await asyncio.gather(*(stores[i % 2].insert(job) for i, job in enumerate(candidates)))

    created = [r for r in results if r.created]
    assert len(created) == 1
    winner = created[0].job
    assert all(r.job.id == winner.id for r in results)
    jobs, _ = await stores[0].list_jobs(tenant="tenant-a")
    assert [j.id for j in jobs] == [winner.id]


async def test_insert_many(store: JobStore, make_job: JobFactory) -> None:
    jobs = [
        make_job(model=f"m{i % 3}", timeout_s=None if i % 2 else 10, parameters={"i": i} if i % 5 else None)
        for i in range(250)
    ]
    results = await store.insert_many(jobs)
    assert [r.job for r in results] == jobs
    assert all(r.created for r in results)
    assert await store.get(jobs[0].id) == jobs[0]
    assert await store.get(jobs[-1].id) == jobs[-1]
    assert await store.get(jobs[1].id) == jobs[1]  # with parameters
    assert await store.pending_counts() == {("m0", "1"): 84, ("m1", "1"): 83, ("m2", "1"): 83}

    assert await store.insert_many([]) == []


async def test_insert_many_with_idempotency_keys(store: JobStore, make_job: JobFactory) -> None:
    first = make_job(idempotency_key="k1", request_hash="h1")
    plain = make_job()
    results = await store.insert_many([first, plain, make_job(idempotency_key="k2")])
    assert [r.created for r in results] == [True, True, True]
    # A retry of the same submission: the keyed jobs come back as they are, nothing is inserted twice.
    again = make_job(idempotency_key="k1", request_hash="h1")
    twice = make_job(idempotency_key="k3")
    same_batch = make_job(idempotency_key="k3")
    retried = await store.insert_many([again, twice, same_batch])
    assert retried[0].created is False and retried[0].job == first
    assert retried[1].created is True
    assert retried[2].created is False and retried[2].job.id == twice.id
    other_tenant = make_job(tenant="tenant-b", idempotency_key="k1")
    assert (await store.insert_many([other_tenant]))[0].created is True
    assert await store.pending_counts() == {("iris", "1"): 5}


async def test_unserializable_inputs_are_refused(store: JobStore, make_job: JobFactory) -> None:
    job = make_job(inputs=[object()])
    with pytest.raises(InvalidInputError, match="JSON"):
        await store.insert(job)
    assert await store.get(job.id) is None


# -- list_jobs ----------------------------------------------------------------------------------------


async def test_list_jobs_pages_newest_first_with_ties_broken_by_id(
    store: JobStore, make_job: JobFactory
) -> None:
    same_instant = BASE + timedelta(minutes=5)
    jobs = [make_job() for _ in range(5)] + [
        make_job(id=f"tie-{i}", created_at=same_instant) for i in range(3)
    ]
    await store.insert_many(jobs)
    await store.insert(make_job(tenant="tenant-b"))
    expected = sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)

    seen: list[Job] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = await store.list_jobs(tenant="tenant-a", limit=3, cursor=cursor)
        pages += 1
        seen += page
        if cursor is None:
            break
    assert seen == expected
    assert pages == 3
    assert [j.id for j in expected[:3]] == ["tie-2", "tie-1", "tie-0"]

    # A page that ends exactly at the last job has no cursor.
    page, cursor = await store.list_jobs(tenant="tenant-a", limit=len(jobs))
    assert page == expected
    assert cursor is None


async def test_list_jobs_filters(store: JobStore, make_job: JobFactory) -> None:
    a = make_job(model="iris")
    b = make_job(model="resnet")
    c = make_job(model="iris")
    await store.insert_many([a, b, c])
    await store.cancel(c.id, tenant="tenant-a", now=NOW)

    ids = lambda jobs: [j.id for j in jobs]  # noqa: E731
    assert ids((await store.list_jobs(tenant="tenant-a", model="iris"))[0]) == [c.id, a.id]
    assert ids((await store.list_jobs(tenant="tenant-a", status=JobStatus.PENDING))[0]) == [b.id, a.id]
    only = await store.list_jobs(tenant="tenant-a", status=JobStatus.PENDING, model="iris")
    assert ids(only[0]) == [a.id]
    assert only[1] is None
    assert await store.list_jobs(tenant="tenant-b") == ([], None)


async def test_list_jobs_rejects_garbage_cursors(store: JobStore) -> None:
    for cursor in ("not-a-cursor", "W10", "WyJ4IiwieSJd", ""):
        with pytest.raises(InvalidInputError):
            await store.list_jobs(tenant="tenant-a", cursor=cursor)


# -- claim --------------------------------------------------------------------------------------------


async def test_claim_takes_runnable_jobs_oldest_first(store: JobStore, make_job: JobFactory) -> None:
    old, mid, new = make_job(), make_job(), make_job()
    later = make_job(run_after=NOW + timedelta(seconds=1))
    cancelled = make_job(cancel_requested=True)  # pending + cancel requested: never run
    await store.insert_many([new, later, old, cancelled, mid])

    first = await store.claim(worker_id="w1", limit=2, lease_s=LEASE_S, now=NOW)
    assert [j.id for j in first] == [old.id, mid.id]
    for job in first:
        assert job.status is JobStatus.RUNNING
        assert job.attempts == 1
        assert job.lease_owner == "w1"
        assert job.lease_expires_at == NOW + timedelta(seconds=LEASE_S)
        assert job.started_at == NOW
        assert await store.get(job.id) == job

    second = await store.claim(worker_id="w2", limit=10, lease_s=LEASE_S, now=NOW)
    assert [j.id for j in second] == [new.id]
    assert await store.claim(worker_id="w3", limit=10, lease_s=LEASE_S, now=NOW) == []

    # run_after is honoured to the microsecond.
    at_run_after = await store.claim(worker_id="w3", limit=10, lease_s=LEASE_S, now=later.run_after)
    assert [j.id for j in at_run_after] == [later.id]
    stored = await store.get(cancelled.id)
    assert stored is not None and stored.status is JobStatus.PENDING
    assert await store.claim(worker_id="w1", limit=0, lease_s=LEASE_S, now=NOW) == []


async def test_claim_is_fair_across_tenants(store: JobStore, make_job: JobFactory) -> None:
    backlog = [make_job(tenant="tenant-a") for _ in range(20)]
    late = [make_job(tenant="tenant-b") for _ in range(3)]  # created after all of a's backlog
    await store.insert_many(backlog + late)

    first = await store.claim(worker_id="w1", limit=4, lease_s=LEASE_S, now=NOW)
    # Each tenant's first job, then each one's second: b does not wait behind a's backlog.
    assert sorted(j.id for j in first) == sorted([backlog[0].id, backlog[1].id, late[0].id, late[1].id])
    second = await store.claim(worker_id="w1", limit=3, lease_s=LEASE_S, now=NOW)
    assert sorted(j.id for j in second) == sorted([backlog[2].id, backlog[3].id, late[2].id])
    rest = await store.claim(worker_id="w1", limit=100, lease_s=LEASE_S, now=NOW)
    assert sorted(j.id for j in rest) == sorted(j.id for j in backlog[4:])


async def test_claims_share_by_tenant_weight_over_a_window(store: JobStore, make_job: JobFactory) -> None:
    # a (weight 3) submitted all its jobs before b and c; c is not listed, so it has the default 2.
    heavy = [make_job(tenant="tenant-a") for _ in range(60)]
    light = [make_job(tenant="tenant-b") for _ in range(60)]
    unlisted = [make_job(tenant="tenant-c") for _ in range(60)]
    await store.insert_many(heavy + light + unlisted)
    weights = TenantWeights({"tenant-a": 3.0, "tenant-b": 1.0}, default=2.0)

    claimed: list[Job] = []
    for _ in range(5):  # a window of 5 claims of 12: 3:1:2 of each claim
        batch = await store.claim(worker_id="w1", limit=12, lease_s=LEASE_S, now=NOW, weights=weights)
        shares = [
            sum(job.tenant == tenant for job in batch) for tenant in ("tenant-a", "tenant-b", "tenant-c")
        ]
        assert shares == [6, 2, 4]
        claimed += batch
    # 30:10:20 over the window, and each tenant's jobs in its own order.
    assert sorted(job.id for job in claimed) == sorted(
        job.id for job in heavy[:30] + light[:10] + unlisted[:20]
    )


async def test_claim_turns_give_every_tenant_its_next_job_first(
    store: JobStore, make_job: JobFactory
) -> None:
    # Turns start at 0 for tenants never claimed from and grow by 1 / weight per job: a 0, 0.5, 1.0,
    # 1.5, ...; b and c 0, 1.0, ... Every tenant's first job has turn 0, so a claim as large as the
    # number of tenants waiting gives each one job, whatever the weights; ties go to the oldest job.
    b_jobs = [make_job(tenant="tenant-b") for _ in range(2)]
    a_jobs = [make_job(tenant="tenant-a") for _ in range(4)]
    c_first = make_job(tenant="tenant-c")
    await store.insert_many([*b_jobs, *a_jobs, c_first])
    weights = TenantWeights({"tenant-a": 2.0})
    claimed = await store.claim(worker_id="w1", limit=3, lease_s=LEASE_S, now=NOW, weights=weights)
    assert sorted(j.id for j in claimed) == sorted([b_jobs[0].id, a_jobs[0].id, c_first.id])
    # The turns go on from there: a's next jobs have turns 0.5, 1.0, 1.5 and b's second 1.0.
    claimed = await store.claim(worker_id="w1", limit=3, lease_s=LEASE_S, now=NOW, weights=weights)
    assert sorted(j.id for j in claimed) == sorted([a_jobs[1].id, b_jobs[1].id, a_jobs[2].id])
    # Weights never hold work back: alone, a tenant of any weight gets the whole claim.
    rest = await store.claim(worker_id="w1", limit=5, lease_s=LEASE_S, now=NOW, weights=weights)
    assert [j.id for j in rest] == [a_jobs[3].id]


async def claim_tenants(
    stores: list[JobStore], claims: int, weights: TenantWeights = EQUAL_WEIGHTS
) -> list[str]:
    """The tenants of ``claims`` claims of one job each, made by the stores in turn (as workers of
    several processes would)."""
    tenants: list[str] = []
    for index in range(claims):
        store = stores[index % len(stores)]
        [job] = await store.claim(worker_id=f"w{index}", limit=1, lease_s=LEASE_S, now=NOW, weights=weights)
        tenants.append(job.tenant)
    return tenants


async def test_claims_of_one_job_alternate_between_tenants(
    store_factory: StoreFactory, make_job: JobFactory
) -> None:
    # a's backlog is older than all of b's jobs, yet b does not wait behind it: the turns are kept in
    # the store between claims (two stores claim in turn here, as two processes would).
    stores = [await store_factory(), await store_factory()]
    backlog = [make_job(tenant="tenant-a") for _ in range(40)]
    late = [make_job(tenant="tenant-b") for _ in range(5)]
    await stores[0].insert_many(backlog + late)
    assert await claim_tenants(stores, 12) == ["tenant-a", "tenant-b"] * 5 + ["tenant-a"] * 2


async def test_claims_of_one_job_share_by_weight(store: JobStore, make_job: JobFactory) -> None:
    # b's jobs are older than a's, but a has 3 times b's weight: of 40 claims, a gets 30.
    light = [make_job(tenant="tenant-b") for _ in range(40)]
    heavy = [make_job(tenant="tenant-a") for _ in range(40)]
    await store.insert_many(light + heavy)
    tenants = await claim_tenants([store], 40, TenantWeights({"tenant-a": 3.0}))
    assert abs(tenants.count("tenant-a") - 30) <= 1
    # and at most one turn apart at every point of the window, not all of b's first
    assert all(abs(tenants[:n].count("tenant-a") - 0.75 * n) <= 1 for n in range(1, 41))


async def test_a_tenant_back_from_idleness_gets_no_burst(store: JobStore, make_job: JobFactory) -> None:
    backlog = [make_job(tenant="tenant-a") for _ in range(60)]
    early = [make_job(tenant="tenant-b") for _ in range(4)]
    await store.insert_many(backlog + early)
    assert await claim_tenants([store], 8) == ["tenant-a", "tenant-b"] * 4
    # b has nothing pending while a gets 20 claims alone ...
    assert await claim_tenants([store], 20) == ["tenant-a"] * 20
    # ... and when it is back, it shares with a from then on: its idle time earned it nothing.
    await store.insert_many([make_job(tenant="tenant-b") for _ in range(10)])
    assert await claim_tenants([store], 10) == ["tenant-b", "tenant-a"] * 5


async def test_turns_behind_the_clock_are_pruned_and_claims_go_on_as_before(
    store: JobStore, make_job: JobFactory
) -> None:
    # The claims of test_a_tenant_back_from_idleness_gets_no_burst, pruned in between: a tenant whose
    # next turn is at or behind the clock starts from the clock with or without its row.
    backlog = [make_job(tenant="tenant-a") for _ in range(60)]
    early = [make_job(tenant="tenant-b") for _ in range(4)]
    await store.insert_many(backlog + early)
    assert await store.prune_turns() == 0  # no tenant was claimed from yet
    assert await claim_tenants([store], 8) == ["tenant-a", "tenant-b"] * 4
    assert await store.prune_turns() == 0  # both next turns (4) are ahead of the clock (3)
    assert await claim_tenants([store], 20) == ["tenant-a"] * 20
    assert await store.prune_turns() == 1  # b's 4 is behind the clock (23); a's 24 is not
    assert await store.prune_turns() == 0
    await store.insert_many([make_job(tenant="tenant-b") for _ in range(10)])
    assert await claim_tenants([store], 10) == ["tenant-b", "tenant-a"] * 5
    # b took the turns 23 to 27 and a 24 to 28: b's next turn (28) is the clock, a's (29) ahead of it.
    assert await store.prune_turns() == 1
    assert await claim_tenants([store], 4) == ["tenant-b", "tenant-a"] * 2


async def test_claim_takes_higher_priority_first_within_a_tenant(
    store: JobStore, make_job: JobFactory
) -> None:
    low, high, mid = make_job(), make_job(priority=5), make_job(priority=1)
    negative = make_job(priority=-3)
    urgent_elsewhere = make_job(tenant="tenant-b", priority=0)
    await store.insert_many([negative, mid, low, high])

    order = [(await claim_one(store)).id for _ in range(4)]
    assert order == [high.id, mid.id, low.id, negative.id]
    stored = await store.get(high.id)
    assert stored is not None and stored.priority == 5

    # Priority orders a tenant's own jobs; it does not let one tenant jump ahead of another.
    flood = [make_job(priority=100) for _ in range(3)]
    await store.insert_many([*flood, urgent_elsewhere])
    both = await store.claim(worker_id="w1", limit=2, lease_s=LEASE_S, now=NOW)
    assert sorted(j.id for j in both) == sorted([flood[0].id, urgent_elsewhere.id])


async def test_claim_reruns_jobs_of_dead_workers(store: JobStore, make_job: JobFactory) -> None:
    job = make_job(max_attempts=3)
    await store.insert(job)
    await claim_one(store, "dead")
    lease_end = NOW + timedelta(seconds=LEASE_S)

    # The lease still runs (expiry is exclusive): nobody may take the job.
    assert await store.claim(worker_id="w2", limit=5, lease_s=LEASE_S, now=lease_end) == []

    after = lease_end + timedelta(microseconds=1)
    rerun = await claim_one(store, "w2", now=after)
    assert rerun.id == job.id
    assert rerun.attempts == 2
    assert rerun.lease_owner == "w2"
    assert rerun.started_at == after
    # The dead worker's late result is refused.
    stale = await store.finish(
        job.id, worker_id="dead", attempt=1, status=JobStatus.SUCCEEDED, outputs=[1], error=None, now=after
    )
    assert stale is None


async def test_claim_fails_lost_jobs_without_attempts_left(store: JobStore, make_job: JobFactory) -> None:
    exhausted = make_job(max_attempts=1)
    cancelling = make_job(max_attempts=3)
    await store.insert_many([exhausted, cancelling])
    await store.claim(worker_id="dead", limit=2, lease_s=LEASE_S, now=NOW)
    assert (await store.cancel(cancelling.id, tenant="tenant-a", now=NOW)).outcome == "cancel_requested"
    fresh = make_job(created_at=NOW)
    await store.insert(fresh)

    later = NOW + timedelta(minutes=5)
    claimed = await store.claim(worker_id="w2", limit=5, lease_s=LEASE_S, now=later)
    assert [j.id for j in claimed] == [fresh.id]

    failed = await store.get(exhausted.id)
    assert failed is not None
    assert failed.status is JobStatus.FAILED
    assert failed.error == JobError("inference_error", LOST_MESSAGE)
    assert failed.finished_at == later
    assert failed.lease_owner is None and failed.lease_expires_at is None
    assert failed.attempts == 1

    # Its cancellation was requested and its worker is gone: it ends cancelled, not re-run.
    gone = await store.get(cancelling.id)
    assert gone is not None
    assert gone.status is JobStatus.CANCELLED
    assert gone.finished_at == later


async def test_concurrent_claimers_never_share_a_job(
    store_factory: StoreFactory, make_job: JobFactory
) -> None:
    stores = [await store_factory() for _ in range(3)]
    # Three tenants, so the claimers also race for the same tenants' turns.
    jobs = [make_job(tenant=f"tenant-{'abc'[index % 3]}") for index in range(120)]
    weights = TenantWeights({"tenant-a": 2.0, "tenant-c": 0.5})
    await stores[0].insert_many(jobs)
    # Half the jobs were taken by a worker that died, so the race covers reclaiming expired leases
    # as well as fresh pending jobs.
    abandoned = await stores[0].claim(worker_id="dead", limit=60, lease_s=LEASE_S, now=NOW)
    later = NOW + timedelta(seconds=LEASE_S + 1)

    async def drain(store: JobStore, worker_id: str) -> list[Job]:
        got: list[Job] = []
        while batch := await store.claim(
            worker_id=worker_id, limit=7, lease_s=LEASE_S, now=later, weights=weights
        ):
            got += batch
        return got

    async def prune(store: JobStore) -> None:
        # The retention janitor of another process, sweeping the turns while the claims run.
        for _ in range(10):
            await store.prune_turns()
            await asyncio.sleep(0.001)

    per_worker, _ = await asyncio.gather(
        asyncio.gather(*(drain(stores[i % 3], f"w{i}") for i in range(6))),
        asyncio.gather(*(prune(store) for store in stores)),
    )
    claimed = [job for batch in per_worker for job in batch]
    assert sorted(j.id for j in claimed) == sorted(j.id for j in jobs)
    rerun = {j.id for j in abandoned}
    assert all(j.attempts == (2 if j.id in rerun else 1) for j in claimed)


async def test_concurrent_claims_take_turns_exactly(
    store_factory: StoreFactory, make_job: JobFactory
) -> None:
    # Claims of one job from two tenants of equal weight alternate, a then b, however many run at once:
    # each claim reads the turns the claims before it left, so no two of them take the same tenant's turn.
    # And each takes its tenant's oldest job left: none skips the jobs a claim before it looked at.
    stores = [await store_factory() for _ in range(4)]
    jobs = {tenant: [make_job(tenant=tenant) for _ in range(40)] for tenant in ("tenant-a", "tenant-b")}
    await stores[0].insert_many(jobs["tenant-a"] + jobs["tenant-b"])

    async def claim_one_job(index: int) -> Job:
        [job] = await stores[index % 4].claim(worker_id=f"w{index}", limit=1, lease_s=LEASE_S, now=NOW)
        return job

    claimed: list[Job] = []
    for claims in range(8, 48, 8):
        claimed += await asyncio.gather(*(claim_one_job(index) for index in range(8)))
        assert sorted(job.id for job in claimed) == sorted(
            job.id for tenant_jobs in jobs.values() for job in tenant_jobs[: claims // 2]
        )


# -- leases and results ---------------------------------------------------------------------------------


async def test_renew_leases_only_extends_own_running_jobs(store: JobStore, make_job: JobFactory) -> None:
    mine, theirs, pending = make_job(), make_job(), make_job(run_after=NOW + timedelta(hours=1))
    await store.insert_many([mine, theirs, pending])
    await claim_one(store, "me")
    await claim_one(store, "them")

    later = NOW + timedelta(seconds=20)
    renewed = await store.renew_leases(
        [mine.id, theirs.id, pending.id, "missing"], worker_id="me", lease_s=LEASE_S, now=later
    )
    assert renewed == 1
    got_mine, got_theirs = await store.get(mine.id), await store.get(theirs.id)
    assert got_mine is not None and got_theirs is not None
    assert got_mine.lease_expires_at == later + timedelta(seconds=LEASE_S)
    assert got_theirs.lease_expires_at == NOW + timedelta(seconds=LEASE_S)
    assert await store.renew_leases([], worker_id="me", lease_s=LEASE_S, now=later) == 0


async def test_finish_records_the_result(store: JobStore, make_job: JobFactory) -> None:
    ok, bad = make_job(), make_job()
    await store.insert_many([ok, bad])
    claimed = await store.claim(worker_id="w1", limit=2, lease_s=LEASE_S, now=NOW)
    done_at = NOW + timedelta(seconds=3)

    succeeded = await store.finish(
        ok.id,
        worker_id="w1",
        attempt=1,
        status=JobStatus.SUCCEEDED,
        outputs=[{"y": 1}],
        error=None,
        now=done_at,
    )
    assert succeeded is not None
    assert succeeded.status is JobStatus.SUCCEEDED
    assert succeeded.outputs == [{"y": 1}]
    assert succeeded.error is None
    assert succeeded.finished_at == done_at
    assert succeeded.started_at == claimed[0].started_at
    assert succeeded.lease_owner is None and succeeded.lease_expires_at is None
    assert await store.get(ok.id) == succeeded

    err = JobError("invalid_input", "expected 4 features")
    failed = await store.finish(
        bad.id, worker_id="w1", attempt=1, status=JobStatus.FAILED, outputs=None, error=err, now=done_at
    )
    assert failed is not None
    assert (failed.status, failed.error, failed.outputs) == (JobStatus.FAILED, err, None)

    # Finished is final: a second finish matches nothing.
    again = await store.finish(
        ok.id, worker_id="w1", attempt=1, status=JobStatus.FAILED, outputs=None, error=err, now=done_at
    )
    assert again is None
    assert await store.get(ok.id) == succeeded

    with pytest.raises(ValueError):
        await store.finish(
            ok.id, worker_id="w1", attempt=1, status=JobStatus.PENDING, outputs=None, error=None, now=done_at
        )


async def test_finish_is_refused_without_the_lease(store: JobStore, make_job: JobFactory) -> None:
    job = make_job()
    await store.insert(job)
    claimed = await claim_one(store, "w1")

    for worker_id, attempt in (("w2", 1), ("w1", 2), ("w1", 0)):
        result = await store.finish(
            job.id,
            worker_id=worker_id,
            attempt=attempt,
            status=JobStatus.SUCCEEDED,
            outputs=[1],
            error=None,
            now=NOW,
        )
        assert result is None
    assert await store.get(job.id) == claimed

    missing = await store.finish(
        "missing", worker_id="w1", attempt=1, status=JobStatus.SUCCEEDED, outputs=[1], error=None, now=NOW
    )
    assert missing is None


async def test_finish_many_settles_each_job_on_its_own_condition(
    store: JobStore, make_job: JobFactory
) -> None:
    first, second, third = make_job(), make_job(), make_job()
    for job in (first, second, third):
        await store.insert(job)
    claimed = await store.claim(worker_id="w1", limit=3, lease_s=LEASE_S, now=NOW)
    assert len(claimed) == 3
    await store.cancel(third.id, tenant=third.tenant, now=NOW)

    results = await store.finish_many(
        [
            FinishRequest(first.id, "w1", 1, JobStatus.SUCCEEDED, ["a"], None),
            FinishRequest(second.id, "w1", 2, JobStatus.SUCCEEDED, ["stale attempt"], None),
            FinishRequest(third.id, "w1", 1, JobStatus.FAILED, None, JobError("timeout", "slow")),
        ],
        now=NOW,
    )

    assert results == [Finished(JobStatus.SUCCEEDED, NOW), None, Finished(JobStatus.CANCELLED, NOW)]
    done = await store.get(first.id)
    assert done is not None and (done.status, done.outputs, done.finished_at) == (
        JobStatus.SUCCEEDED,
        ["a"],
        NOW,
    )
    cancelled = await store.get(third.id)
    assert cancelled is not None and (cancelled.status, cancelled.error) == (JobStatus.CANCELLED, None)
    still_running = await store.get(second.id)
    assert still_running is not None and still_running.status is JobStatus.RUNNING
    assert await store.finish_many([], now=NOW) == []


async def test_finish_after_cancel_request_cancels_and_discards(
    store: JobStore, make_job: JobFactory
) -> None:
    job = make_job()
    await store.insert(job)
    await claim_one(store)
    assert (await store.cancel(job.id, tenant="tenant-a", now=NOW)).outcome == "cancel_requested"

    done_at = NOW + timedelta(seconds=1)
    result = await store.finish(
        job.id, worker_id="w1", attempt=1, status=JobStatus.SUCCEEDED, outputs=[42], error=None, now=done_at
    )
    assert result is not None
    assert result.status is JobStatus.CANCELLED
    assert result.outputs is None
    assert result.finished_at == done_at
    assert await store.get(job.id) == result


async def test_retry_later_requeues_with_backoff(store: JobStore, make_job: JobFactory) -> None:
    job = make_job()
    await store.insert(job)
    await claim_one(store, "w1")
    err = JobError("timeout", "took longer than 2s")
    backoff = NOW + timedelta(seconds=10)

    assert await store.retry_later(job.id, worker_id="w2", attempt=1, error=err, run_after=backoff) is None
    assert await store.retry_later(job.id, worker_id="w1", attempt=2, error=err, run_after=backoff) is None

    retried = await store.retry_later(job.id, worker_id="w1", attempt=1, error=err, run_after=backoff)
    assert retried is not None
    assert retried.status is JobStatus.PENDING
    assert retried.run_after == backoff
    assert retried.error == err
    assert retried.attempts == 1
    assert retried.lease_owner is None and retried.lease_expires_at is None
    assert retried.finished_at is None
    assert await store.get(job.id) == retried

    assert await store.claim(worker_id="w1", limit=5, lease_s=LEASE_S, now=NOW + timedelta(seconds=9)) == []
    second = await claim_one(store, "w1", now=backoff)
    assert second.attempts == 2
    assert second.error == err  # the last error stays visible while the job runs again


async def test_retry_later_after_cancel_request_cancels(store: JobStore, make_job: JobFactory) -> None:
    job = make_job()
    await store.insert(job)
    await claim_one(store)
    await store.cancel(job.id, tenant="tenant-a", now=NOW)
    err = JobError("timeout", "slow")
    result = await store.retry_later(job.id, worker_id="w1", attempt=1, error=err, run_after=NOW)
    assert result is not None
    assert result.status is JobStatus.CANCELLED
    assert result.finished_at is not None
    assert await store.claim(worker_id="w1", limit=5, lease_s=LEASE_S, now=NOW + timedelta(hours=1)) == []


async def test_release_gives_jobs_back(store: JobStore, make_job: JobFactory) -> None:
    mine, theirs, cancelling = make_job(), make_job(), make_job()
    await store.insert_many([mine, theirs, cancelling])
    await claim_one(store, "me")
    await claim_one(store, "them")
    await claim_one(store, "me")
    await store.cancel(cancelling.id, tenant="tenant-a", now=NOW)

    assert await store.release([mine.id, theirs.id, cancelling.id, "missing"], worker_id="me") == 2
    released = await store.get(mine.id)
    assert released is not None
    assert released.status is JobStatus.PENDING
    assert released.attempts == 0  # the interrupted attempt does not count
    assert released.lease_owner is None and released.lease_expires_at is None
    still = await store.get(theirs.id)
    assert still is not None and still.status is JobStatus.RUNNING and still.lease_owner == "them"
    ended = await store.get(cancelling.id)
    assert ended is not None and ended.status is JobStatus.CANCELLED

    again = await claim_one(store, "other")
    assert again.id == mine.id
    assert again.attempts == 1
    assert await store.release([], worker_id="me") == 0


# -- cancel -----------------------------------------------------------------------------------------------


async def test_cancel_outcomes(store: JobStore, make_job: JobFactory) -> None:
    running, done, pending = make_job(), make_job(), make_job()
    await store.insert_many([running, done, pending])
    await claim_one(store, "w1")
    await claim_one(store, "w1")
    await store.finish(
        done.id, worker_id="w1", attempt=1, status=JobStatus.SUCCEEDED, outputs=[1], error=None, now=NOW
    )
    cancel_at = NOW + timedelta(seconds=1)

    r = await store.cancel(pending.id, tenant="tenant-a", now=cancel_at)
    assert r.outcome == "cancelled"
    assert r.job is not None
    assert (r.job.status, r.job.finished_at) == (JobStatus.CANCELLED, cancel_at)
    assert await store.get(pending.id) == r.job
    assert await store.claim(worker_id="w2", limit=5, lease_s=LEASE_S, now=cancel_at) == []

    r = await store.cancel(running.id, tenant="tenant-a", now=cancel_at)
    assert r.outcome == "cancel_requested"
    assert r.job is not None
    assert (r.job.status, r.job.cancel_requested, r.job.finished_at) == (JobStatus.RUNNING, True, None)

    before = await store.get(done.id)
    r = await store.cancel(done.id, tenant="tenant-a", now=cancel_at)
    assert (r.outcome, r.job) == ("terminal", before)
    assert before is not None and before.status is JobStatus.SUCCEEDED

    r = await store.cancel(pending.id, tenant="tenant-a", now=cancel_at)
    assert r.outcome == "terminal"

    assert await store.cancel(running.id, tenant="tenant-b", now=cancel_at) == CancelResult(None, "not_found")
    assert await store.cancel("missing", tenant="tenant-a", now=cancel_at) == CancelResult(None, "not_found")
    untouched = await store.get(running.id)
    assert untouched is not None and untouched.status is JobStatus.RUNNING


# -- housekeeping ------------------------------------------------------------------------------------------


async def test_pending_counts(store: JobStore, make_job: JobFactory) -> None:
    await store.insert_many(
        [
            make_job(model="iris", version="1"),
            make_job(model="iris", version="1"),
            make_job(model="iris", version="2"),
            make_job(model="resnet", version="1", tenant="tenant-b"),
            make_job(model="bert", version="1"),
        ]
    )
    assert await store.pending_counts() == {
        ("iris", "1"): 2,
        ("iris", "2"): 1,
        ("resnet", "1"): 1,
        ("bert", "1"): 1,
    }
    await claim_one(store)  # the oldest iris:1
    await store.cancel(
        (await store.list_jobs(tenant="tenant-a", model="bert"))[0][0].id, tenant="tenant-a", now=NOW
    )
    assert await store.pending_counts() == {("iris", "1"): 1, ("iris", "2"): 1, ("resnet", "1"): 1}


async def test_delete_finished_before(store: JobStore, make_job: JobFactory) -> None:
    cutoff = BASE + timedelta(days=7)
    old = [
        make_job(status=status, finished_at=cutoff - timedelta(seconds=1))
        for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
    ]
    recent = make_job(status=JobStatus.SUCCEEDED, finished_at=cutoff)
    pending = make_job()
    running = make_job(status=JobStatus.RUNNING, lease_owner="w", lease_expires_at=NOW, attempts=1)
    await store.insert_many([*old, recent, pending, running])

    assert await store.delete_finished_before(cutoff) == 3
    for job in old:
        assert await store.get(job.id) is None
    for job in (recent, pending, running):
        assert await store.get(job.id) == job
    assert await store.delete_finished_before(cutoff) == 0


async def test_ping(store: JobStore) -> None:
    assert await store.ping() is True


async def test_closed_store_does_not_answer(store_factory: StoreFactory) -> None:
    store = await store_factory()
    await store.close()
    assert await store.ping() is False


# -- wake-ups ------------------------------------------------------------------------------------------------


async def test_wait_for_work_times_out_without_work(store: JobStore) -> None:
    await quiesce(store)
    started = time.monotonic()
    await store.wait_for_work(0.2)
    assert 0.18 <= time.monotonic() - started < 2.0


async def test_wait_for_work_wakes_on_insert(store: JobStore, make_job: JobFactory) -> None:
    waiter = await start_waiting(store)
    await store.insert(make_job())
    await asyncio.wait_for(waiter, 2.0)


@pytest.mark.parametrize("action", ["release", "retry_later", "insert_many"])
async def test_wait_for_work_wakes_when_work_comes_back(
    store: JobStore, make_job: JobFactory, action: str
) -> None:
    job = make_job()
    await store.insert(job)
    await claim_one(store)
    waiter = await start_waiting(store)
    if action == "release":
        await store.release([job.id], worker_id="w1")
    elif action == "retry_later":
        await store.retry_later(
            job.id, worker_id="w1", attempt=1, error=JobError("timeout", "t"), run_after=NOW
        )
    else:
        await store.insert_many([make_job()])
    await asyncio.wait_for(waiter, 2.0)


ONLY_POSTGRES = pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)  # SQLite reaches other processes by polling only: the wait_for_work timeout


@ONLY_POSTGRES
async def test_postgres_wakes_other_processes(store_factory: StoreFactory, make_job: JobFactory) -> None:
    waiting, submitting = await store_factory(), await store_factory()
    waiter = await start_waiting(waiting)
    await submitting.insert(make_job())
    await asyncio.wait_for(waiter, 3.0)


@ONLY_POSTGRES
async def test_postgres_debounced_inserts_still_wake_other_processes(
    backend: Any, store_factory: StoreFactory, make_job: JobFactory
) -> None:
    waiting = await store_factory()
    submitting = postgres_store(backend.postgres_url, schema=backend.schema, notify_debounce_s=0.5)
    await submitting.open()
    try:
        await submitting.insert(make_job())  # first of a burst: notifies at once
        waiter = await start_waiting(waiting)  # takes that notification
        await submitting.insert(make_job())  # within the window: no notification of its own...
        await asyncio.sleep(0.1)
        assert not waiter.done()
        await asyncio.wait_for(waiter, 3.0)  # ...but the trailing one at the window's end
    finally:
        await submitting.close()


# -- hostile values and outages ------------------------------------------------------------------------------


async def test_nul_characters_find_nothing_and_filter_nothing(store: JobStore, make_job: JobFactory) -> None:
    # PostgreSQL text cannot hold U+0000; every store answers alike: no such job, or a refused filter.
    job = make_job()
    await store.insert(job)
    assert await store.get("\x00") is None
    assert await store.get(job.id + "\x00", tenant="tenant-a") is None
    assert await store.cancel("x\x00", tenant="tenant-a", now=NOW) == CancelResult(None, "not_found")
    with pytest.raises(InvalidInputError, match="U\\+0000"):
        await store.list_jobs(tenant="tenant-a", model="a\x00b")
    with pytest.raises(InvalidInputError, match="cursor"):
        await store.list_jobs(tenant="tenant-a", cursor=encode_cursor(BASE, "x\x00"))
    with pytest.raises(InvalidInputError, match="U\\+0000"):
        await store.insert(make_job(idempotency_key="k\x00"))
    assert await store.get(job.id) == job  # nothing else changed


ONLY_SQLITE = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)


@ONLY_SQLITE
async def test_sqlite_locked_by_another_process_answers_unavailable_then_recovers(
    backend: Any, store: JobStore, make_job: JobFactory
) -> None:
    job = make_job()
    await store.insert(job)
    holder = sqlite3.connect(backend.sqlite_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # e.g. a backup or a sqlite3 shell holding the write lock
        with pytest.raises(StoreUnavailableError, match="cannot be written"):
            await store.insert(make_job())
        assert await store.get(job.id) == job  # readers are not blocked (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await store.insert(make_job())


@ONLY_SQLITE
async def test_sqlite_read_only_answers_unavailable(store: JobStore, make_job: JobFactory) -> None:
    connector = store.connector
    assert isinstance(connector, SQLiteConnector)
    await connector._run(lambda conn: conn.execute("PRAGMA query_only = ON"))  # the file turned read-only
    with pytest.raises(StoreUnavailableError, match="cannot be written"):
        await store.insert(make_job())
    assert await store.list_jobs(tenant="tenant-a") == ([], None)


# -- API keys made at run time -------------------------------------------------------------------------------


def test_every_named_query_has_a_statement_in_every_connector() -> None:
    assert set(SQLITE_QUERIES) == set(Query)
    assert set(POSTGRES_QUERIES) == set(Query)
    assert set(MemoryConnector()._queries) == set(Query)


async def test_keys_are_created_listed_touched_and_revoked(store: JobStore) -> None:
    expires = NOW + timedelta(days=30)
    first, secret = await store.create_key(
        tenant="acme", scopes=["jobs", "predict"], expires_at=expires, now=NOW
    )
    assert secret.startswith(first.prefix) and first.digest == key_digest(secret)
    assert first.scopes == frozenset({"jobs", "predict"}) and first.expires_at == expires
    later = NOW + timedelta(seconds=1)
    second, other = await store.create_key(tenant="beta", scopes=["admin"], expires_at=None, now=later)
    assert other != secret and second.id != first.id
    assert await store.list_keys() == [first, second]
    assert secret not in repr(await store.list_keys())  # only the digest is kept

    assert await store.touch_keys({first.id, "no-such-key"}, now=NOW + timedelta(seconds=5)) == 1
    [touched, _] = await store.list_keys()
    assert touched.last_used_at == NOW + timedelta(seconds=5)

    revoked = await store.revoke_key(first.id, now=NOW + timedelta(seconds=9))
    assert revoked is not None and revoked.revoked_at == NOW + timedelta(seconds=9)
    assert await store.list_keys() == [second]
    assert await store.revoke_key(first.id, now=NOW) is None  # already revoked
    assert await store.revoke_key("key_missing", now=NOW) is None
    assert await store.revoke_key("key\x00", now=NOW) is None


async def test_key_requests_are_checked(store: JobStore) -> None:
    with pytest.raises(InvalidInputError, match="tenant"):
        await store.create_key(tenant="a b", scopes=["jobs"], expires_at=None, now=NOW)
    with pytest.raises(InvalidInputError, match="scopes"):
        await store.create_key(tenant="acme", scopes=["root"], expires_at=None, now=NOW)
    with pytest.raises(InvalidInputError, match="future"):
        await store.create_key(tenant="acme", scopes=["jobs"], expires_at=NOW, now=NOW)
    assert await store.list_keys() == []


async def test_keys_are_shared_by_stores_on_one_database(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()
    key, _ = await one.create_key(tenant="acme", scopes=["jobs"], expires_at=None, now=NOW)
    assert await two.list_keys() == [key]
    await two.revoke_key(key.id, now=NOW)
    assert await one.list_keys() == []


async def test_cancel_without_a_tenant_reaches_any_tenants_job(store: JobStore, make_job: JobFactory) -> None:
    job = make_job(tenant="tenant-b")
    await store.insert(job)
    assert (await store.cancel(job.id, tenant="tenant-a", now=NOW)).outcome == "not_found"
    assert (await store.cancel(job.id, tenant=None, now=NOW)).outcome == "cancelled"


def test_postgres_outage_errors_are_told_from_statement_errors() -> None:
    for lost in (
        psycopg.OperationalError("connection refused"),  # no SQLSTATE: the client lost the server
        psycopg.errors.AdminShutdown(),
        psycopg.errors.CannotConnectNow(),
        psycopg.errors.ConnectionFailure(),
        psycopg.InterfaceError("the connection is closed"),
        PoolTimeout("no connection in time"),
        PoolClosed("closed"),
    ):
        assert is_unreachable(lost), lost
    for statement in (
        psycopg.errors.DeadlockDetected(),
        psycopg.errors.QueryCanceled(),
        psycopg.errors.UniqueViolation(),
        psycopg.errors.UntranslatableCharacter(),
        ValueError("x"),
    ):
        assert not is_unreachable(statement), statement
