"""PostgreSQL administration for the tests: the server to use and one-statement admin calls that fail, never skip."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest
from sqlalchemy.engine import make_url

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
