"""Fixtures: an isolated SPECAI_HOME, a user, real server processes (auth on or off), and databases on both engines."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from databases import ENGINES, pg_admin_url, pg_execute
from sqlalchemy.engine import make_url

from helpers import ServerProcess, run_cli
from specai.config import DatabaseSettings, Settings
from specai.store import Store

PASSWORD = "pw-one-two"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty SPECAI_HOME for one test."""
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def auth_home(home: Path) -> Path:
    """A home with user alice and a config that enables auth."""
    result = run_cli(home, "auth", "add-user", "alice", "--password-stdin", input=PASSWORD + "\n")
    assert result.returncode == 0, result.stderr
    (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\n")
    return home


@pytest.fixture
def server(home: Path) -> Iterator[ServerProcess]:
    """A running server with auth disabled."""
    proc = ServerProcess(home).start()
    yield proc
    proc.stop()


@pytest.fixture
def auth_server(auth_home: Path) -> Iterator[ServerProcess]:
    """A running server with auth enabled and user alice."""
    proc = ServerProcess(auth_home).start()
    yield proc
    proc.stop()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- engines: one SQLite file per test; one PostgreSQL database per module, its schema reset per test --------


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh database for this module, dropped afterwards; given as a standard postgresql:// URL."""
    admin = pg_admin_url()
    name = f"specai_test_{secrets.token_hex(6)}"
    pg_execute(admin, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        pg_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=ENGINES)
def db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings pointing at an empty database on each engine."""
    home = tmp_path / "specai-home"
    if request.param == "sqlite":
        return Settings(home=home)
    url: str = request.getfixturevalue("pg_url")
    pg_execute(url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return Settings(home=home, database=DatabaseSettings(url=url))


@pytest.fixture
async def store(db_settings: Settings) -> AsyncIterator[Store]:
    """An open, migrated store, closed after the test."""
    opened = await Store.open(db_settings)
    try:
        yield opened
    finally:
        await opened.close()
