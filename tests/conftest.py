"""Fixtures: an isolated SPECAI_HOME, a user, real server processes (auth on or off), databases on both engines;
and the harness rules: cheap password hashing in this process, and no process started by a test not marked `live`."""

from __future__ import annotations

import os
import pty
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from databases import ENGINES, pg_admin_url, pg_execute
from live import PASSWORD, ServerProcess, add_user
from sqlalchemy.engine import make_url

from specai import auth
from specai.config import DatabaseSettings, Settings
from specai.store import Store

__all__ = ["PASSWORD"]

# Fixtures that start a process: a test using one is marked `live` for it.
PROCESS_FIXTURES = frozenset({"server", "auth_server"})

# --- the harness rules ---------------------------------------------------------------------------------------------

# argon2id at the lowest cost, for hashes made and checked in this process only: a login in an in-process test
# costs microseconds instead of ~0.2 s. Production defaults stay untouched; homes served by a real server process
# get full-cost hashes (live.add_user), and test_harness.py checks that the library default is what users get.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PRODUCTION_HASHER = auth._hasher

_running: pytest.Item | None = None


def pytest_configure(config: pytest.Config) -> None:
    auth._hasher = CHEAP_HASHER
    _guard_process_starts()


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: the marks added here must count
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that use a process fixture `live`; run the modules with live tests first.

    Live modules are the long ones (servers, waits): under `pytest -n N --dist loadfile` a long module picked up
    last would run on alone at the end while the other workers idle."""
    for item in items:
        if PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.live)
    live_modules = {item.path for item in items if item.get_closest_marker("live")}
    items.sort(key=lambda item: item.path not in live_modules)  # stable: the order within a module stays


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    global _running
    _running = item
    try:
        return (yield)
    finally:
        _running = None


TESTS = Path(__file__).resolve().parent
_PLUMBING = {subprocess.__file__, os.__file__, pty.__file__, __file__}


def _started_by_tests() -> bool:
    """True when the code that asked for the process is in tests/ (a library's own, like `uname -p` from
    `platform`, is no test starting a process)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in _PLUMBING:
        frame = frame.f_back  # type: ignore[assignment]
    return frame is not None and Path(frame.f_code.co_filename).resolve().is_relative_to(TESTS)


def _check_may_start(what: object) -> None:
    """Fail the running test when it starts a process without the `live` marker."""
    item = _running
    shown = " ".join(map(str, what)) if isinstance(what, list | tuple) else str(what)
    if (log := os.environ.get("PYTEST_PROCESS_LOG")) and item is not None:
        with open(log, "a") as out:  # which test starts which process: PYTEST_PROCESS_LOG=/tmp/p.log
            out.write(f"{item.nodeid}\t{shown[:200]}\n")
    if item is not None and item.get_closest_marker("live") is None and _started_by_tests():
        pytest.fail(
            f"{item.nodeid} starts a process ({shown[:120]}) but is not marked live: "
            "add @pytest.mark.live (or pytestmark = pytest.mark.live), or run it in process",
            pytrace=False,
        )


def _guard_process_starts() -> None:
    """Route every way a test starts a process (Popen and so subprocess.run, os.fork, pty.fork) past the check."""
    popen_init = subprocess.Popen.__init__

    def guarded_init(self: subprocess.Popen[Any], args: Any, *rest: Any, **options: Any) -> None:
        _check_may_start(args)
        popen_init(self, args, *rest, **options)

    subprocess.Popen.__init__ = guarded_init  # type: ignore[method-assign]

    def guarded(name: str, start: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **options: Any) -> Any:
            _check_may_start(name)
            return start(*args, **options)

        return wrapper

    os.fork = guarded("os.fork", os.fork)
    pty.fork = guarded("pty.fork", pty.fork)


# --- homes and servers ---------------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """An empty SPECAI_HOME for one test."""
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def client_home(tmp_path: Path) -> Path:
    """A separate, empty SPECAI_HOME for the CLI on the client side (no pins, tokens or last sessions)."""
    path = tmp_path / "client"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def auth_home(home: Path) -> Path:
    """A home with user alice and a config that enables auth."""
    add_user(home, "alice", PASSWORD)
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
