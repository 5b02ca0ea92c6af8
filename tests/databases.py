"""PostgreSQL for the tests: the server to use, one-statement admin calls that fail (never skip), and users put where
a server on PostgreSQL reads them (the database, not the credentials file)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from specai.config import Settings
from specai.store import Store
from specai.store.urls import shares_state
from specai.users import directory, table
from specai.users.directory import load_users

PG_URL_ENV = "SPECAI_TEST_PG_URL"
DEFAULT_PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ENGINES = ["sqlite", "postgresql"]


def pg_admin_url() -> str:
    """The maintenance database URL (asyncpg wants the plain postgresql:// form)."""
    raw = os.environ.get(PG_URL_ENV) or DEFAULT_PG_ADMIN_URL
    return make_url(raw).set(drivername="postgresql").render_as_string(hide_password=False)


async def pg_admin(url: str, sql: str) -> None:
    """Run one admin statement, failing the test (never skipping it) when PostgreSQL is unusable."""
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        pytest.fail(
            f"PostgreSQL is required for these tests and is not usable at {shown}: {exc}. "
            f"Start it, or point {PG_URL_ENV} at a server where this user may create databases.",
            pytrace=False,
        )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_execute(url: str, sql: str) -> None:
    """`pg_admin` for synchronous fixtures."""
    asyncio.run(pg_admin(url, sql))


def fresh_database_url(request: pytest.FixtureRequest) -> str | None:
    """For a fixture parametrized by ENGINES: None on SQLite, else this module's PostgreSQL database, emptied."""
    if request.param != "postgresql":
        return None
    url: str = request.getfixturevalue("pg_url")
    pg_execute(url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return url


def database_toml(request: pytest.FixtureRequest) -> str:
    """The `[database]` config section for the engine of `request.param` (empty on SQLite: the default file)."""
    url = fresh_database_url(request)
    return f'[database]\nurl = "{url}"\n' if url else ""


# -- users where a PostgreSQL-mode server reads them: the database ----------------------------------------------

# What every test server on PostgreSQL signs tokens with, unless its test configures one (a PostgreSQL-mode server
# refuses to start without one, so that all servers sharing a database accept each other's tokens).
SHARED_TOKEN_SECRET = "specai-tests-shared-token-secret-0123456789abcdef"
T = TypeVar("T")


def run_async(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine function on a loop of its own in a worker thread (fine inside a running loop too)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


def on_database(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    """`work(store)` on `settings`' database, opened (and migrated) for it and closed afterwards."""

    async def run() -> T:
        store = await Store.open(settings)
        try:
            return await work(store)
        finally:
            await store.close()

    return run_async(run)


def seed_users(settings: Settings) -> None:
    """With `[database] url` on PostgreSQL, load the credentials file's users into the database (ids kept; names
    already there are left alone), as `specai auth import` would: that is where such a server reads them. Nothing
    on SQLite, or without a credentials file."""
    if not shares_state(settings) or not settings.credentials_file.exists():
        return
    entries = load_users(settings.credentials_file)
    on_database(settings, lambda store: table.import_users(store, entries))


def change_user(client: Any, settings: Settings, operation: str, username: str, *args: Any) -> Any:
    """`directory.<operation>(credentials file, username, *args)`, or on PostgreSQL the same `table.<operation>` on
    the database; then, on PostgreSQL, wait until the in-process app of `client` (a Litestar TestClient) reloaded
    that user (its change-counter watcher does it within `versions.POLL_SECS`, at once on NOTIFY)."""
    if not shares_state(settings):
        return getattr(directory, operation)(settings.credentials_file, username, *args)
    users = client.app.state.specai.users
    before = users.get(username)
    done = on_database(settings, lambda store: getattr(table, operation)(store, username, *args))
    deadline = time.monotonic() + 5
    while users.get(username) is before:
        assert time.monotonic() < deadline, f"the app did not reload user '{username}' after {operation}"
        time.sleep(0.01)
    return done
