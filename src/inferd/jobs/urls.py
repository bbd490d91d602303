"""Job store URLs: which store to build from one settings string."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from inferd.core.errors import ConfigError, InferdError
from inferd.jobs.postgres import postgres_store
from inferd.jobs.sqlite import sqlite_store
from inferd.jobs.store import JobStore

ACCEPTED_FORMS = (
    "sqlite:///relative/path.db (relative to the working directory), sqlite:////absolute/path.db, "
    "postgresql://user:password@host:port/dbname[?schema=NAME] (postgres:// works too)"
)


def redact(url: str) -> str:
    """The URL with its password masked, for error messages and logs."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def _invalid(url: str, why: str) -> ConfigError:
    return ConfigError(f"invalid job store URL {redact(url)!r}: {why}; accepted forms: {ACCEPTED_FORMS}")


def _sqlite(url: str) -> JobStore:
    rest = url[len("sqlite://") :]
    # SQLAlchemy convention: the empty host leaves "/" + path, so three slashes mean relative and four
    # mean absolute.
    if not rest:
        raise _invalid(url, "the sqlite URL names no database file")
    if not rest.startswith("/"):
        raise _invalid(url, "a sqlite URL has no host part; write sqlite:/// followed by the file path")
    if "?" in rest or "#" in rest:
        raise _invalid(url, "sqlite URLs take no query parameters")
    path = rest[1:]
    if not path or path.endswith("/"):
        raise _invalid(url, "the sqlite URL names no database file")
    absolute = os.path.abspath(path)
    try:
        Path(absolute).parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the directory for the job store {absolute!r} (from {url!r}): {exc}"
        ) from exc
    return sqlite_store(absolute)


def _postgres(url: str) -> JobStore:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  # parsing the port is what validates it
    except ValueError as exc:
        raise _invalid(url, str(exc)) from exc
    schema = "public"
    kept: list[str] = []
    seen_schema = False
    # The query is filtered textually so the other parameters reach libpq exactly as written.
    for item in parts.query.split("&") if parts.query else []:
        key, _, value = item.partition("=")
        if unquote(key) != "schema":
            kept.append(item)
            continue
        if seen_schema:
            raise _invalid(url, "the schema parameter is given twice")
        seen_schema = True
        schema = unquote(value)
    dsn = urlunsplit(parts._replace(query="&".join(kept)))
    try:
        return postgres_store(dsn, schema=schema)
    except ConfigError as exc:
        raise _invalid(url, exc.message) from exc


def open_store(url: str) -> JobStore:
    """Build the (not yet opened) store a URL names; ``await store.open()`` connects and migrates.
    For SQLite, the file's directory is created here."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        return _sqlite(url)
    if scheme in ("postgresql", "postgres"):
        return _postgres(url)
    raise _invalid(url, "unknown scheme" if scheme else "not a URL")


@dataclass(frozen=True, slots=True)
class PreparedStore:
    applied: list[int]  # the migrations this opening applied
    stored_keys: int  # run-time API keys it holds


async def prepare_store(url: str) -> PreparedStore:
    """Open the store once, creating or upgrading its schema, and close it. A store that cannot be
    reached or migrated raises ConfigError naming the URL (password masked) and the cause."""
    store = open_store(url)
    try:
        await store.open()
    except InferdError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot open the job store {redact(url)}: {type(exc).__name__}: {exc}") from exc
    try:
        return PreparedStore(list(store.connector.applied_migrations), len(await store.list_keys()))
    finally:
        await store.close()
