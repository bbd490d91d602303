"""The job API over HTTP, in process (ASGITransport, lifespan entered, in-process worker on SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from jobs_testkit import ACME, BETA, JOB_FIELDS, PREDICT_ONLY, assert_error, bearer, job_app, with_store

from inferd.jobs.models import Job, JobStatus
from inferd.jobs.store import JobStore, encode_cursor


def test_submit_get_single_and_batch_jobs(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path) as api:
            response = await api.submit("echo", {"input": {"a": 1}})
            assert response.status_code == 202, response.text
            job = response.json()
            assert response.headers["location"] == f"/v1/jobs/{job['id']}"
            assert set(job) == JOB_FIELDS | {"output"}
            assert job["status"] in ("pending", "running", "succeeded")
            assert job["model"] == "echo" and job["version"] == "2"  # resolved at submission
            assert uuid.UUID(job["id"]).version == 4
            assert job["max_attempts"] == 3

            done = await api.wait_done(job["id"])
            assert set(done) == JOB_FIELDS | {"output"}
            assert done["status"] == "succeeded" and done["output"] == {"a": 1} and done["error"] is None
            assert done["attempts"] == 1 and done["finished_at"] is not None

            items = [{"i": i} for i in range(9)]
            batch = await api.submit_ok("echo", {"inputs": items, "max_attempts": 5, "timeout_s": 10})
            assert set(batch) == JOB_FIELDS | {"outputs"} and batch["max_attempts"] == 5
            done = await api.wait_done(batch["id"])
            assert done["outputs"] == items
            pipeline = api.engine.registry.models["echo"].versions["2"].pipeline
            assert pipeline is not None
            assert max(len(call) for call in pipeline.model.instance.calls) <= 4

            pinned = await api.client.post(
                "/v1/models/echo/versions/1/jobs", json={"input": "v1"}, headers=bearer(ACME)
            )
            assert pinned.status_code == 202, pinned.text
            assert pinned.json()["version"] == "1"
            assert (await api.wait_done(pinned.json()["id"]))["output"] == "v1"

    asyncio.run(body())


def test_submission_is_validated_and_rejected_jobs_are_not_stored(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path) as api:
            assert_error(await api.submit("no-such-model", {"input": 1}), 404, "model_not_found")
            assert_error(
                await api.client.post(
                    "/v1/models/echo/versions/9/jobs", json={"input": 1}, headers=bearer(ACME)
                ),
                404,
                "model_not_found",
            )
            rejected = assert_error(await api.submit("strict", {"input": "seven"}), 422, "invalid_input")
            assert "input_schema" in rejected["error"]["message"]
            rejected = assert_error(await api.submit("strict", {"inputs": [1, "two"]}), 422, "invalid_input")
            assert "inputs[1]" in rejected["error"]["message"]
            assert_error(await api.submit("echo", {"input": 1, "inputs": [1]}), 422, "invalid_input")
            assert_error(await api.submit("echo", {"inputs": []}), 422, "invalid_input")
            assert_error(await api.submit("echo", {"input": 1, "max_attempts": 0}), 422, "invalid_input")
            assert_error(await api.submit("echo", {"input": 1, "bogus": 1}), 422, "invalid_input")
            listed = await api.list()
            assert listed.status_code == 200 and listed.json() == {"jobs": [], "next_cursor": None}
            # Nothing was queued either.
            text = (await api.client.get("/metrics")).text
            assert 'job_queue_depth{model="strict"' not in text

    asyncio.run(body())


def test_jobs_scope_is_required(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path) as api:
            assert_error(await api.submit("echo", {"input": 1}, key=PREDICT_ONLY), 403, "forbidden")
            assert_error(
                await api.client.post("/v1/models/echo/jobs", json={"input": 1}), 401, "unauthenticated"
            )
            assert_error(await api.list(key=PREDICT_ONLY), 403, "forbidden")

    asyncio.run(body())


def test_cancel_pending_and_terminal_jobs(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, worker=False) as api:
            job = await api.submit_ok("echo", {"input": "never runs"})
            response = await api.cancel(job["id"])
            assert response.status_code == 200, response.text
            cancelled = response.json()
            assert set(cancelled) == JOB_FIELDS | {"output"}
            assert cancelled["status"] == "cancelled" and cancelled["finished_at"] is not None
            assert cancelled["output"] is None
            assert (await api.get(job["id"])).json()["status"] == "cancelled"
            body = assert_error(await api.cancel(job["id"]), 409, "conflict")
            assert "cancelled" in body["error"]["message"]

    asyncio.run(body())


def test_cancel_running_job_discards_its_result(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path) as api:
            job = await api.submit_ok("slowjob", {"input": {"sleep_s": 0.6}})
            deadline = time.monotonic() + 10
            while (await api.get(job["id"])).json()["status"] != "running":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
            response = await api.cancel(job["id"])
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "running"  # marked; the attempt is still executing
            final = await api.wait_done(job["id"])
            assert final["status"] == "cancelled"
            assert final["output"] is None and final["error"] is None
            assert_error(await api.cancel(job["id"]), 409, "conflict")

            done = await api.submit_ok("echo", {"input": 1})
            await api.wait_done(done["id"])
            assert_error(await api.cancel(done["id"]), 409, "conflict")

    asyncio.run(body())


def test_idempotency_key(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, worker=False) as api:
            key = {"Idempotency-Key": "order-42"}
            first = await api.submit("echo", {"input": {"n": 1}}, headers=key)
            second = await api.submit("echo", {"input": {"n": 1}}, headers=key)
            assert first.status_code == 202 and second.status_code == 202, (first.text, second.text)
            assert first.json()["id"] == second.json()["id"]
            assert second.headers["location"] == f"/v1/jobs/{first.json()['id']}"
            assert_error(await api.submit("echo", {"input": {"n": 2}}, headers=key), 409, "conflict")
            assert_error(await api.submit("echo", {"inputs": [{"n": 1}]}, headers=key), 409, "conflict")
            other_tenant = await api.submit("echo", {"input": {"n": 1}}, headers=key, key=BETA)
            assert other_tenant.status_code == 202
            assert other_tenant.json()["id"] != first.json()["id"]
            assert len((await api.list()).json()["jobs"]) == 1
            assert len((await api.list(key=BETA)).json()["jobs"]) == 1
            no_key_a = await api.submit_ok("echo", {"input": {"n": 1}})
            no_key_b = await api.submit_ok("echo", {"input": {"n": 1}})
            assert no_key_a["id"] != no_key_b["id"]  # without a key, every submission is a new job
            assert_error(
                await api.submit("echo", {"input": 1}, headers={"Idempotency-Key": "x" * 201}),
                422,
                "invalid_input",
            )

    asyncio.run(body())


def test_tenant_isolation_and_list_pagination(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, worker=False) as api:
            mine = [(await api.submit_ok("echo", {"input": i}))["id"] for i in range(7)]
            strict = await api.submit_ok("strict", {"input": 3})
            mine.append(strict["id"])
            theirs = await api.submit_ok("echo", {"input": "beta"}, key=BETA)

            assert_error(await api.get(theirs["id"]), 404, "job_not_found")
            assert_error(await api.get(theirs["id"], wait=0.2), 404, "job_not_found")
            assert_error(await api.cancel(theirs["id"]), 404, "job_not_found")
            assert_error(await api.get(str(uuid.uuid4())), 404, "job_not_found")
            # The other tenant's job is untouched by the refused cancel.
            assert (await api.get(theirs["id"], key=BETA)).json()["status"] == "pending"

            seen: list[str] = []
            cursor = None
            pages = 0
            while True:
                params: dict[str, Any] = {"limit": 3}
                if cursor:
                    params["cursor"] = cursor
                response = await api.list(**params)
                assert response.status_code == 200, response.text
                page = response.json()
                assert set(page) == {"jobs", "next_cursor"}
                assert len(page["jobs"]) <= 3
                seen += [job["id"] for job in page["jobs"]]
                pages += 1
                cursor = page["next_cursor"]
                if cursor is None:
                    break
                assert pages < 10
            assert pages == 3
            assert len(seen) == len(set(seen)) == 8
            assert set(seen) == set(mine)
            assert seen == list(reversed(mine))  # newest first
            assert theirs["id"] not in seen

            only_strict = (await api.list(model="strict")).json()["jobs"]
            assert [job["id"] for job in only_strict] == [strict["id"]]
            await api.cancel(mine[0])
            cancelled = (await api.list(status="cancelled")).json()["jobs"]
            assert [job["id"] for job in cancelled] == [mine[0]]
            assert len((await api.list(status="pending")).json()["jobs"]) == 7
            assert [job["id"] for job in (await api.list(key=BETA)).json()["jobs"]] == [theirs["id"]]
            assert_error(await api.list(cursor="not-a-cursor"), 422, "invalid_input")
            assert_error(await api.list(status="bogus"), 422, "invalid_input")

    asyncio.run(body())


def test_wait_returns_when_the_job_finishes(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path) as api:
            job = await api.submit_ok("slowjob", {"input": {"sleep_s": 0.3}})
            started = time.monotonic()
            response = await api.get(job["id"], wait=20)
            elapsed = time.monotonic() - started
            assert response.status_code == 200
            assert response.json()["status"] == "succeeded"
            assert response.json()["output"] == {"slept": 0.3, "tag": None}
            assert elapsed < 3.0, elapsed  # answered at completion, far before the 20 s wait
            # An already finished job is answered at once.
            started = time.monotonic()
            assert (await api.get(job["id"], wait=20)).json()["status"] == "succeeded"
            assert time.monotonic() - started < 1.0
            assert_error(await api.get(job["id"], wait=61), 422, "invalid_input")

    asyncio.run(body())


def test_wait_ends_with_the_pending_job(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, worker=False) as api:
            job = await api.submit_ok("echo", {"input": 1})
            started = time.monotonic()
            response = await api.get(job["id"], wait=0.6)
            elapsed = time.monotonic() - started
            assert response.status_code == 200
            assert response.json()["status"] == "pending"
            assert 0.55 <= elapsed < 3.0, elapsed

    asyncio.run(body())


def test_flaky_job_retried_over_http_and_failed_job_reports_last_error(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path) as api:
            ok = await api.submit_ok("flaky", {"input": {"marker": str(tmp_path / "m1")}})
            bad = await api.submit_ok(
                "flaky", {"input": {"marker": str(tmp_path / "m2"), "failures": 9}, "max_attempts": 2}
            )
            done = await api.wait_done(ok["id"])
            assert done["status"] == "succeeded" and done["attempts"] == 2 and done["error"] is None
            failed = await api.wait_done(bad["id"])
            assert failed["status"] == "failed" and failed["attempts"] == 2
            assert failed["error"]["code"] == "inference_error"
            assert "flaky failure 2 of 9" in failed["error"]["message"]
            assert failed["output"] is None

    asyncio.run(body())


def test_result_size_limit_over_http(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, job_max_result_bytes=2048) as api:
            job = await api.submit_ok("big", {"input": {"n": 10_000}})
            done = await api.wait_done(job["id"])
            assert done["status"] == "failed" and done["attempts"] == 1
            assert done["error"]["code"] == "inference_error"
            assert "2048-byte limit" in done["error"]["message"]

    asyncio.run(body())


def test_queue_depth_metric_in_process(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, worker=False) as api:
            for i in range(3):
                await api.submit_ok("strict", {"input": i})
            text = (await api.client.get("/metrics")).text
            assert 'job_queue_depth{model="strict",version="1"} 3.0' in text
            job = await api.submit_ok("strict", {"input": 9})
            await api.cancel(job["id"])
            text = (await api.client.get("/metrics")).text
            assert 'job_queue_depth{model="strict",version="1"} 3.0' in text
            assert JobStatus.CANCELLED.value == (await api.get(job["id"])).json()["status"]

    asyncio.run(body())


def test_store_failure_on_submit_is_a_native_500_with_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        async with job_app(tmp_path, worker=False) as api:
            ok = await api.submit("echo", {"input": 1})
            assert ok.status_code == 202

            async def store_down(*args: Any, **kwargs: Any) -> Any:
                raise OSError("disk unplugged")

            monkeypatch.setattr(JobStore, "insert_many", store_down)
            response = await api.submit("echo", {"input": 2}, headers={"X-Request-ID": "req-store-down"})
            body = assert_error(response, 500, "inference_error")
            assert body["request_id"] == "req-store-down" == response.headers["x-request-id"]
            assert "could not be stored" in body["error"]["message"]
            assert "disk unplugged" not in body["error"]["message"]  # no internals leak
            assert len((await api.list()).json()["jobs"]) == 1

    asyncio.run(body())


def test_store_failure_on_read_is_a_native_500_with_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body() -> None:
        async with job_app(tmp_path, worker=False) as api:
            job = await api.submit_ok("echo", {"input": 1})

            async def store_down(*args: Any, **kwargs: Any) -> Any:
                raise OSError("disk unplugged")

            monkeypatch.setattr(JobStore, "get", store_down)
            response = await api.client.get(
                f"/v1/jobs/{job['id']}",
                headers={"Authorization": f"Bearer {ACME}", "X-Request-ID": "req-read-down"},
            )
            body = assert_error(response, 500, "inference_error")
            assert body["request_id"] == "req-read-down" == response.headers["x-request-id"]
            assert "disk unplugged" not in body["error"]["message"]

    asyncio.run(body())


def test_retention_janitor_of_the_runtime_deletes_expired_jobs_and_prunes_turns(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"

    def turn_rows() -> list[str]:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return [tenant for (tenant,) in db.execute("SELECT tenant FROM tenant_turns ORDER BY tenant")]

    async def claim_in_turn(store: JobStore) -> None:
        # Claims of one job: a, b, a, a (b has one job), so b's next turn (1) falls behind the clock (2).
        jobs = [
            Job(id=f"turn-{i}", tenant=t, model="echo", version="1", inputs=[1], batch=False)
            for i, t in enumerate("aaab")
        ]
        await store.insert_many(jobs)
        for _ in jobs:
            assert len(await store.claim(worker_id="w", limit=1, lease_s=60, now=datetime.now(UTC))) == 1

    with_store(f"sqlite:///{path}", claim_in_turn)
    assert turn_rows() == ["a", "b"]

    async def body() -> None:
        async with job_app(tmp_path, worker=False, job_ttl=0.3, janitor_interval_s=0.1) as api:
            finished = await api.submit_ok("echo", {"input": "done"})
            assert (await api.cancel(finished["id"])).status_code == 200  # terminal now
            pending = await api.submit_ok("echo", {"input": "waiting"})
            deadline = time.monotonic() + 5
            while (await api.get(finished["id"])).status_code == 200:
                assert time.monotonic() < deadline, "the janitor did not delete the expired job"
                await asyncio.sleep(0.05)
            assert_error(await api.get(finished["id"]), 404, "job_not_found")
            await asyncio.sleep(0.5)  # well past the ttl: pending jobs are never expired
            assert (await api.get(pending["id"])).json()["status"] == "pending"
            # ... and the turns of tenants behind the clock are swept with the jobs.
            while turn_rows() != ["a"]:
                assert time.monotonic() < deadline, "the janitor did not prune b's turn"
                await asyncio.sleep(0.05)

    asyncio.run(body())


def test_job_parameters_are_stored_and_reach_the_model(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, worker=True) as api:
            job = await api.submit_ok("tuned", {"inputs": [1, 2], "parameters": {"scale": 10}})
            done = await api.wait_done(job["id"])
            assert done["status"] == "succeeded" and done["outputs"] == [10, 20]

            refused = await api.submit("echo", {"input": 1, "parameters": {"scale": 10}})
            assert_error(refused, 422, "invalid_input")
            assert (await api.list()).json()["jobs"][0]["id"] == job["id"]  # nothing queued

            key = {"Idempotency-Key": "same-key"}
            first = await api.submit("tuned", {"input": 1, "parameters": {"scale": 2}}, headers=key)
            other = await api.submit("tuned", {"input": 1, "parameters": {"scale": 3}}, headers=key)
            assert first.status_code == 202
            assert_error(other, 409, "conflict")  # parameters are part of the request

    asyncio.run(body())


@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_nul_bytes_in_ids_filters_and_cursors_answer_404_or_422(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("pg").url if store == "postgres" else None

    async def body() -> None:
        async with job_app(tmp_path, store=url, worker=False) as api:
            await api.submit_ok("echo", {"input": 1})
            auth = bearer(ACME)
            assert_error(await api.client.get("/v1/jobs/%00", headers=auth), 404, "job_not_found")
            assert_error(await api.client.get("/v1/jobs/x%00y", headers=auth), 404, "job_not_found")
            assert_error(await api.client.post("/v1/jobs/x%00/cancel", headers=auth), 404, "job_not_found")
            assert_error(await api.client.get("/v1/jobs?model=a%00b", headers=auth), 422, "invalid_input")
            assert_error(await api.client.get("/v1/jobs?cursor=%00", headers=auth), 422, "invalid_input")
            cursor = encode_cursor(datetime.now(UTC), "x\x00")
            assert_error(await api.list(cursor=cursor), 422, "invalid_input")
            assert len((await api.list()).json()["jobs"]) == 1

    asyncio.run(body())


def test_sqlite_write_lock_held_elsewhere_answers_503_store_unavailable(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, worker=False) as api:
            job = await api.submit_ok("echo", {"input": 1})
            holder = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
            try:
                holder.execute("BEGIN EXCLUSIVE")  # a backup or a sqlite3 shell holds the file
                response = await api.submit("echo", {"input": 2})
                assert_error(response, 503, "store_unavailable")
                assert response.headers["retry-after"] == "1"
                assert (await api.get(job["id"])).status_code == 200  # reads go on (WAL)
                predict = await api.client.post(
                    "/v1/models/echo/predict", json={"input": 3}, headers=bearer(PREDICT_ONLY)
                )
                assert predict.status_code == 200, predict.text
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            await api.submit_ok("echo", {"input": 4})


def test_bulk_lines_skip_blank_ones_and_errors_name_the_line_number(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, worker=False) as api:
            # \r\n endings, a blank line, a whitespace-only line and empty lines at the end.
            content = b'{"input": 1}\r\n\r\n{"input": "seven"\r\n  \t\r\n[1]\r\n{"input": 2, "bogus": 1}\r\n{"input": 3}\r\n\r\n'
            request_key = {**bearer(ACME), "Idempotency-Key": "blank-1"}
            response = await api.client.post(
                "/v1/models/echo/jobs/bulk", content=content, headers=request_key
            )
            assert response.status_code == 200, response.text
            out = [orjson.loads(line) for line in response.content.splitlines()]
            assert len(out) == 5  # one per non-blank line, in order
            assert out[0]["status"] == out[4]["status"] == "pending"
            assert out[1]["error"]["code"] == "invalid_input"
            assert out[1]["error"]["message"].startswith("line 3 is not valid JSON (")
            assert out[2]["error"]["message"].startswith("line 5 must be a JSON object")
            assert out[3]["error"]["message"].startswith("line 6: unknown field(s)")
            # KEY:LINE uses the same numbers: the retry returns the same jobs, and line 7 is keyed blank-1:7.
            again = await api.client.post("/v1/models/echo/jobs/bulk", content=content, headers=request_key)
            again_out = [orjson.loads(line) for line in again.content.splitlines()]
            assert [again_out[0]["id"], again_out[4]["id"]] == [out[0]["id"], out[4]["id"]]
            keyed = await api.client.post(
                "/v1/models/echo/jobs/bulk",
                content=b'{"input": 3, "idempotency_key": "blank-1:7"}',
                headers=bearer(ACME),
            )
            assert orjson.loads(keyed.content)["id"] == out[4]["id"]
            for blank in (b"\r\n", b" \n\t\n"):
                assert_error(
                    await api.client.post("/v1/models/echo/jobs/bulk", content=blank, headers=bearer(ACME)),
                    422,
                    "invalid_input",
                )

    asyncio.run(body())


def test_bulk_submission_keeps_the_good_lines_and_answers_each_in_order(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, worker=False) as api:
            lines = [
                b'{"input": {"n": 1}, "priority": 5}',
                b'{"input": "seven"',  # not JSON
                b'{"inputs": [1, 2]}',
                b'{"input": 1, "bogus": true}',
                b'{"input": 1, "priority": "high"}',
                b'{"input": 3, "idempotency_key": "line-key"}',
            ]
            response = await api.client.post(
                "/v1/models/echo/jobs/bulk", content=b"\n".join(lines) + b"\n", headers=bearer(ACME)
            )
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("application/x-ndjson")
            out = [orjson.loads(line) for line in response.content.splitlines()]
            assert len(out) == len(lines)
            assert out[0]["status"] == "pending" and out[0]["priority"] == 5 and out[0]["output"] is None
            assert out[2]["outputs"] is None and out[2]["priority"] == 0
            for bad in (1, 3, 4):
                assert out[bad]["error"]["code"] == "invalid_input", out[bad]
            assert "bogus" in out[3]["error"]["message"]
            listed = {job["id"] for job in (await api.list()).json()["jobs"]}
            assert listed == {out[0]["id"], out[2]["id"], out[5]["id"]}

            # The model is in the path, so no line could succeed: 404 for the request, in both body forms.
            for model_path in ("/v1/models/nope", "/v1/models/echo/versions/9"):
                for content_type in ("application/x-ndjson", "application/json"):
                    missing = await api.client.post(
                        f"{model_path}/jobs/bulk",
                        content=b'{"input": 1}\n',
                        headers={**bearer(ACME), "Content-Type": content_type},
                    )
                    assert_error(missing, 404, "model_not_found")
            two_lines = b'{"input": 1}\n{"input": 2}\n'
            missing = await api.client.post(
                "/v1/models/nope/jobs/bulk", content=two_lines, headers=bearer(ACME)
            )
            assert_error(missing, 404, "model_not_found")

            # A request key keys every line: sending the same request again returns the same jobs.
            request_key = {**bearer(ACME), "Idempotency-Key": "bulk-7"}
            body_lines = b'{"input": 1}\n{"input": 2}\n{"input": 3, "idempotency_key": "line-key"}\n'
            first = await api.client.post(
                "/v1/models/echo/jobs/bulk", content=body_lines, headers=request_key
            )
            again = await api.client.post(
                "/v1/models/echo/jobs/bulk", content=body_lines, headers=request_key
            )
            first_ids = [orjson.loads(line)["id"] for line in first.content.splitlines()]
            assert first_ids == [orjson.loads(line)["id"] for line in again.content.splitlines()]
            assert first_ids[2] == out[5]["id"]  # the line's own key wins over the request's
            pinned = await api.client.post(
                "/v1/models/echo/versions/1/jobs/bulk", content=b'{"input": 1}', headers=bearer(ACME)
            )
            assert orjson.loads(pinned.content)["version"] == "1"
            assert_error(
                await api.client.post("/v1/models/echo/jobs/bulk", content=b"\n", headers=bearer(ACME)),
                422,
                "invalid_input",
            )

    asyncio.run(body())
