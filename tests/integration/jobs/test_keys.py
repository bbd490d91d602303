"""Run-time API keys: /v1/admin/keys in process, ``inferd keys``, and two servers sharing one store.

A key change reaches each process with its next background refresh (every 0.5 s), so tests poll for
it with a bounded loop; how fast it is is not asserted here.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from jobs_testkit import (
    ACME,
    API_KEYS,
    BETA,
    PREDICT_ONLY,
    Processes,
    assert_error,
    bearer,
    job_app,
    poll_until,
    run_inferd,
)

ADMIN = "k-admin"
KEYS = f"{API_KEYS};{ADMIN}:ops:admin"
KEY_FIELDS = {"id", "tenant", "scopes", "prefix", "created_at", "expires_at", "last_used_at", "revoked_at"}


async def _until(what: str, check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s}s"
        await asyncio.sleep(0.05)


def test_admin_creates_lists_and_revokes_keys_that_work_at_once(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, api_keys=KEYS, worker=False) as api:
            admin = bearer(ADMIN)
            created = await api.client.post(
                "/v1/admin/keys", json={"tenant": "gamma", "scopes": ["jobs", "predict"]}, headers=admin
            )
            assert created.status_code == 201, created.text
            key = created.json()
            assert set(key) == KEY_FIELDS | {"key"}
            assert key["tenant"] == "gamma" and key["scopes"] == ["jobs", "predict"]
            assert key["key"].startswith(key["prefix"]) and key["expires_at"] is None

            async def accepted() -> bool:
                return (await api.submit("echo", {"input": 1}, key=key["key"])).status_code == 202

            await _until("the new key accepted", accepted)
            listed = (await api.client.get("/v1/admin/keys", headers=admin)).json()["keys"]
            assert [k["id"] for k in listed] == [key["id"]]
            assert set(listed[0]) == KEY_FIELDS and "key" not in listed[0]

            async def last_use_recorded() -> bool:
                keys = (await api.client.get("/v1/admin/keys", headers=admin)).json()["keys"]
                return keys[0]["last_used_at"] is not None

            await _until("last use recorded", last_use_recorded)

            revoked = await api.client.delete(f"/v1/admin/keys/{key['id']}", headers=admin)
            assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None

            async def refused() -> bool:
                response = await api.submit("echo", {"input": 2}, key=key["key"])
                if response.status_code == 202:
                    return False
                assert_error(response, 401, "unauthenticated")
                return True

            await _until("the revoked key refused", refused)
            assert (await api.client.get("/v1/admin/keys", headers=admin)).json()["keys"] == []
            assert_error(
                await api.client.delete(f"/v1/admin/keys/{key['id']}", headers=admin), 404, "not_found"
            )
            # Configured keys are untouched by all this.
            assert (await api.submit("echo", {"input": 3})).status_code == 202

    asyncio.run(body())


def test_expired_key_is_refused_and_requests_are_checked(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, api_keys=KEYS, worker=False) as api:
            admin = bearer(ADMIN)
            soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
            created = await api.client.post(
                "/v1/admin/keys",
                json={"tenant": "gamma", "scopes": ["jobs"], "expires_at": soon},
                headers=admin,
            )
            assert created.status_code == 201, created.text
            secret = created.json()["key"]

            async def refused() -> bool:
                return (await api.list(key=secret)).status_code == 401

            await _until("the key refused after its expiry", refused)

            for bad in (
                {"tenant": "gamma", "scopes": ["root"]},
                {"tenant": "no spaces", "scopes": ["jobs"]},
                {"tenant": "gamma", "scopes": []},
                {"tenant": "gamma", "scopes": ["jobs"], "expires_at": "2001-01-01T00:00:00Z"},
                {"tenant": "gamma", "scopes": ["jobs"], "expires_at": "2099-01-01T00:00:00"},  # no offset
                {"tenant": "gamma", "scopes": ["jobs"], "extra": 1},
            ):
                assert_error(
                    await api.client.post("/v1/admin/keys", json=bad, headers=admin), 422, "invalid_input"
                )
            # Only admin keys manage keys.
            assert_error(await api.client.get("/v1/admin/keys", headers=bearer(ACME)), 403, "forbidden")
            assert_error(
                await api.client.post(
                    "/v1/admin/keys", json={"tenant": "acme", "scopes": ["admin"]}, headers=bearer(ACME)
                ),
                403,
                "forbidden",
            )
            assert_error(
                await api.client.delete("/v1/admin/keys/x", headers=bearer(PREDICT_ONLY)), 403, "forbidden"
            )
            assert_error(await api.client.get("/v1/admin/keys"), 401, "unauthenticated")

    asyncio.run(body())


def test_admin_reads_and_cancels_any_tenants_job_by_id_but_lists_its_own(tmp_path: Path) -> None:
    async def body() -> None:
        async with job_app(tmp_path, api_keys=KEYS, worker=False) as api:
            theirs = await api.submit_ok("echo", {"input": 1}, key=BETA)
            assert_error(await api.get(theirs["id"], key=ACME), 404, "job_not_found")  # other tenants: 404
            seen = await api.get(theirs["id"], key=ADMIN)
            assert seen.status_code == 200 and seen.json()["id"] == theirs["id"]
            assert (await api.list(key=ADMIN)).json()["jobs"] == []  # listing stays per tenant
            cancelled = await api.cancel(theirs["id"], key=ADMIN)
            assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
            assert (await api.get(theirs["id"], key=BETA)).json()["status"] == "cancelled"

    asyncio.run(body())


# -- inferd keys and two servers on one store ---------------------------------------------------------------


def _keys_cli(tmp_path: Path, store: str, *args: str) -> str:
    result = run_inferd(["keys", *args, "--store", store], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _status(url: str, key: str) -> int:
    return httpx.get(f"{url}/v1/jobs", headers=bearer(key), timeout=10).status_code


@pytest.mark.slow
def test_keys_made_by_the_cli_work_on_every_server_and_a_revocation_reaches_them_all(
    tmp_path: Path, procs: Processes
) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    admin_key = _keys_cli(tmp_path, store, "create", "--tenant", "ops", "--scopes", "admin").strip()
    user_key = _keys_cli(
        tmp_path, store, "create", "--tenant", "gamma", "--scopes", "jobs", "--expires", "30d"
    ).strip()
    listed = _keys_cli(tmp_path, store, "list", "--json")
    keys: list[dict[str, Any]] = json.loads(listed)["keys"]
    assert [(k["tenant"], k["scopes"]) for k in keys] == [("ops", ["admin"]), ("gamma", ["jobs"])]
    assert admin_key not in listed and user_key not in listed

    # No INFERD_API_KEYS at all: the store's keys are enough to start, and to call.
    servers = [procs.serve(store, "--no-worker", env={"INFERD_API_KEYS": ""}) for _ in range(2)]
    for server in servers:
        server.wait_http("/readyz")
        assert _status(server.url, user_key) == 200
        assert _status(server.url, "ik_not-a-key") == 401

    user_id = next(k["id"] for k in keys if k["tenant"] == "gamma")
    revoked = httpx.delete(f"{servers[0].url}/v1/admin/keys/{user_id}", headers=bearer(admin_key), timeout=10)
    assert revoked.status_code == 200, revoked.text
    for server in servers:
        poll_until(
            "the revoked key refused", lambda url=server.url: _status(url, user_key) == 401, timeout_s=10
        )
    assert all(_status(server.url, admin_key) == 200 for server in servers)

    admin_id = next(k["id"] for k in keys if k["tenant"] == "ops")
    _keys_cli(tmp_path, store, "revoke", admin_id)
    for server in servers:
        poll_until(
            "the CLI revocation seen", lambda url=server.url: _status(url, admin_key) == 401, timeout_s=10
        )
    gone = run_inferd(["keys", "revoke", admin_id, "--store", store], cwd=tmp_path)
    assert gone.returncode == 1 and "revoked already" in gone.stderr
