"""``inferd keys``: run-time API keys, managed in the job store itself (no server needed).

Every process sharing the store picks a change up within about a second. The key is printed once, by
``create``; the store keeps only its SHA-256 digest.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from inferd.cli_common import ConfigOption, err_console, fail, print_table, settings_from
from inferd.core.errors import InferdError
from inferd.core.settings import parse_duration
from inferd.core.tenancy import KeyScope
from inferd.jobs.models import utcnow
from inferd.jobs.store import JobStore

T = TypeVar("T")

keys_app = typer.Typer(help="Manage API keys kept in the job store.", no_args_is_help=True)
StoreOption = Annotated[
    str | None, typer.Option("--store", help="Job store URL (default: the configured one).")
]


def _with_store(store_url: str | None, config: Any, action: Callable[[JobStore], Awaitable[T]]) -> T:
    from inferd.jobs.urls import open_store

    settings = settings_from({"store": store_url}, config)

    async def run() -> T:
        store = open_store(settings.store)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except InferdError as exc:
        fail(exc.message)
        raise  # unreachable; fail() exits


def _expiry(text: str | None, now: datetime) -> datetime | None:
    """``--expires``: a duration from now (``30d``, ``12h``) or an RFC 3339 time with its offset."""
    if text is None:
        return None
    try:
        return now + timedelta(seconds=parse_duration(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        fail(f"--expires {text!r}: give a duration like 30d or 12h, or a time like 2027-01-31T00:00:00Z")
        raise AssertionError  # unreachable
    return when


@keys_app.command("create")
def create(
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant the key acts for.")],
    scopes: Annotated[
        str, typer.Option("--scopes", help=f"Comma-separated: {', '.join(KeyScope)} (admin: everything).")
    ],
    expires: Annotated[
        str | None, typer.Option("--expires", help="A duration (30d, 12h) or an RFC 3339 time.")
    ] = None,
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Make a key and print it (once: only its digest is kept)."""
    now = utcnow()
    expires_at = _expiry(expires, now)
    key, secret = _with_store(
        store,
        config,
        lambda s: s.create_key(tenant=tenant, scopes=scopes.split(","), expires_at=expires_at, now=now),
    )
    print(secret)
    err_console.print(
        f"key {key.id} for tenant {key.tenant}, scopes {','.join(sorted(key.scopes))}"
        + (f", expires {key.expires_at.isoformat()}" if key.expires_at else "")
        + ". Keep it now: it cannot be shown again.",
        highlight=False,
    )


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ") if value is not None else "-"


@keys_app.command("list")
def list_keys(
    store: StoreOption = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The keys that are not revoked (not the INFERD_API_KEYS ones)."""
    from inferd.http.admin_keys import key_document

    keys = _with_store(store, config, lambda s: s.list_keys())
    if as_json:
        print(json.dumps({"keys": [key_document(key) for key in keys]}, indent=2))
        return
    table = Table("id", "prefix", "tenant", "scopes", "created", "last used", "expires")
    for key in keys:
        table.add_row(
            key.id,
            key.prefix + "…",
            key.tenant,
            ",".join(sorted(key.scopes)),
            _when(key.created_at),
            _when(key.last_used_at),
            _when(key.expires_at),
        )
    print_table(table)


@keys_app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (see 'inferd keys list').")],
    store: StoreOption = None,
    config: ConfigOption = None,
) -> None:
    """Revoke a key: every process sharing the store refuses it within about a second."""
    key = _with_store(store, config, lambda s: s.revoke_key(key_id, now=utcnow()))
    if key is None:
        fail(f"no API key {key_id!r} (or it is revoked already)", 1)
    err_console.print(f"revoked {key_id} (tenant {key.tenant if key else '?'})", highlight=False)
