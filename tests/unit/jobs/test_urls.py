"""Job store URLs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from inferd.core.errors import ConfigError
from inferd.jobs.models import Job
from inferd.jobs.postgres import PostgresConnector
from inferd.jobs.sqlite import SQLiteConnector
from inferd.jobs.urls import open_store


def test_sqlite_relative_path_is_resolved_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///data/nested/jobs.db").connector
    assert isinstance(store, SQLiteConnector)
    assert store.path == str(tmp_path / "data" / "nested" / "jobs.db")
    assert (tmp_path / "data" / "nested").is_dir()
    assert not (tmp_path / "data" / "nested" / "jobs.db").exists()  # opening creates the file


def test_sqlite_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "elsewhere" / "q.db"
    store = open_store(f"sqlite:///{target}").connector  # the path starts with "/": four slashes in all
    assert isinstance(store, SQLiteConnector)
    assert store.path == str(target)
    assert target.parent.is_dir()
    assert not (tmp_path / str(target).lstrip("/")).exists()


def test_sqlite_store_from_url_works(tmp_path: Path, runner: asyncio.Runner) -> None:
    store = open_store(f"sqlite:///{tmp_path}/a/b/jobs.db")

    async def roundtrip() -> Job | None:
        await store.open()
        try:
            job = Job(id="j1", tenant="t", model="m", version="1", inputs=[1], batch=False)
            await store.insert(job)
            return await store.get("j1")
        finally:
            await store.close()

    got = runner.run(roundtrip())
    assert got is not None and got.inputs == [1]
    assert (tmp_path / "a" / "b" / "jobs.db").is_file()


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
def test_postgres_urls(scheme: str) -> None:
    store = open_store(f"{scheme}://inferd@db.internal:6543/jobs").connector
    assert isinstance(store, PostgresConnector)
    # Lower case: libpq only knows the lower-case prefixes.
    assert store.dsn == f"{scheme.lower()}://inferd@db.internal:6543/jobs"
    assert store.schema == "public"


def test_postgres_schema_parameter_is_taken_out_of_the_dsn() -> None:
    store = open_store(
        "postgresql://u:p@h:5432/db?sslmode=require&schema=inferd_jobs&application_name=x%20y"
    ).connector
    assert isinstance(store, PostgresConnector)
    assert store.schema == "inferd_jobs"
    assert store.dsn == "postgresql://u:p@h:5432/db?sslmode=require&application_name=x%20y"

    only = open_store("postgres://h/db?schema=q").connector
    assert isinstance(only, PostgresConnector)
    assert (only.dsn, only.schema) == ("postgres://h/db", "q")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mysql://u@h/db", "unknown scheme"),
        ("postgresql+psycopg://u@h/db", "unknown scheme"),
        ("jobs.db", "not a URL"),
        ("", "not a URL"),
        ("sqlite://", "names no database file"),
        ("sqlite:///", "names no database file"),
        ("sqlite:////", "names no database file"),
        ("sqlite:///dir/", "names no database file"),
        ("sqlite://host/jobs.db", "no host part"),
        ("sqlite:///jobs.db?mode=ro", "no query parameters"),
        ("postgresql://h/db?schema=Bad-Name", "invalid PostgreSQL schema name"),
        ("postgresql://h/db?schema=pg_catalog", "invalid PostgreSQL schema name"),
        ("postgresql://h/db?schema=a&schema=b", "given twice"),
        ("postgresql://h:notaport/db", "invalid job store URL"),
    ],
)
def test_bad_urls_say_what_is_accepted(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(url)
    message = str(info.value)
    assert why in message
    assert repr(url) in message
    assert "sqlite:///relative/path.db" in message
    assert "sqlite:////absolute/path.db" in message
    assert "postgresql://" in message


def test_errors_do_not_leak_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        open_store("postgresql://inferd:s3cret@h/db?schema=NOPE")
    assert "s3cret" not in str(info.value)
    assert "postgresql://inferd:***@h/db?schema=NOPE" in str(info.value)


def test_unwritable_sqlite_directory_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match="cannot create the directory"):
        open_store(f"sqlite:///{blocker}/jobs.db")
