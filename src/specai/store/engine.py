"""The open database: a pooled async engine over SQLite or PostgreSQL, its transactions and its schema version."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Table, event, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from specai.config import DatabaseSettings, Settings
from specai.errors import DatabaseUnavailableError, SchemaVersionError
from specai.files import ensure_private_dir
from specai.store.locks import MIGRATION_LOCK
from specai.store.migrations import MIGRATIONS, Migration
from specai.store.schema import schema_version
from specai.store.urls import database_url, redacted, sqlite_file

BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 10
APPLICATION_NAME = "specai"  # of pooled PostgreSQL connections: processes count their peers by it (budget.py)
DEFAULT_POOL_SIZE = DatabaseSettings.pool_size
DEFAULT_MAX_OVERFLOW = DatabaseSettings.max_overflow
_WRITE_OPTION = "specai_write"


# --- engine set-up ----------------------------------------------------------------------------------------------


def _prepare_sqlite_file(path: Path) -> None:
    """Create the folder (0700) and an empty file (0600) so SQLite and its WAL inherit owner-only permissions."""
    try:
        ensure_private_dir(path.parent)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    except OSError as exc:
        raise DatabaseUnavailableError(f"cannot create database file {path}: {exc.strerror or exc}") from None


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLAlchemy, not the sqlite3 module, decides when transactions begin (see _sqlite_on_begin), so DDL is
    # transactional and SELECTs are repeatable; pragmas apply to each new connection.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    # Switching a new file to WAL can answer "database is locked" at once, without waiting in busy_timeout,
    # while another connection is opening the same file; retry within the busy timeout instead of failing.
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _sqlite_on_begin(conn: Connection) -> None:
    # Writers take the write lock up front: waiting in busy_timeout beats failing on a lock upgrade.
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE_OPTION) else "BEGIN")


def _create_engine(url: URL, pool_size: int, max_overflow: int) -> AsyncEngine:
    """SQLite with its pragmas; PostgreSQL with a pool of `pool_size` (+ `max_overflow` under load) named connections."""
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        return engine
    connect_args: dict[str, Any] = {"server_settings": {"application_name": APPLICATION_NAME}}
    if "timeout" not in url.query:
        connect_args["timeout"] = PG_CONNECT_TIMEOUT_S
    return create_async_engine(
        url, pool_pre_ping=True, pool_size=pool_size, max_overflow=max_overflow, connect_args=connect_args
    )


def insert_ignore(conn: AsyncConnection | Connection, table: Table, *key: str) -> Insert:
    """`INSERT ... ON CONFLICT (key) DO NOTHING` for the connection's engine."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    return dialect_insert(table).on_conflict_do_nothing(index_elements=list(key) or None)


def upsert(
    conn: AsyncConnection | Connection, table: Table, key: Sequence[str], columns: Sequence[str]
) -> Insert:
    """`INSERT ... ON CONFLICT (key) DO UPDATE SET` each of `columns` to the inserted value."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = dialect_insert(table)
    return statement.on_conflict_do_update(
        index_elements=list(key), set_={name: statement.excluded[name] for name in columns}
    )


# --- the store --------------------------------------------------------------------------------------------------


class Store:
    """An open database: pooled async engine, transactions, and the schema version it is migrated to."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._writer = engine.execution_options(**{_WRITE_OPTION: True})
        # SQLite has one writer at a time: queueing in-process is fairer and faster than busy-wait polling.
        self._write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @classmethod
    async def open(cls, settings: Settings, *, migrate: bool = True) -> Store:
        """Open the configured database (creating SQLite's folder 0700) and bring its schema up to date.

        On PostgreSQL the pool holds `[database] pool_size` connections, plus `max_overflow` more under load.
        """
        db = settings.database
        return await cls.open_url(
            database_url(settings), migrate=migrate, pool_size=db.pool_size, max_overflow=db.max_overflow
        )

    @classmethod
    async def open_url(
        cls,
        url: str | URL,
        *,
        migrate: bool = True,
        pool_size: int = DEFAULT_POOL_SIZE,
        max_overflow: int = DEFAULT_MAX_OVERFLOW,
    ) -> Store:
        """Open the database at an async SQLAlchemy URL, e.g. `database_url(settings)`."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and (path := sqlite_file(parsed)) is not None:
            _prepare_sqlite_file(path)
        store = cls(_create_engine(parsed, pool_size, max_overflow))
        try:
            await store._ping()
            if migrate:
                await store.migrate()
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def engine(self) -> AsyncEngine:
        """The underlying SQLAlchemy async engine."""
        return self._engine

    @property
    def url(self) -> str:
        """The database URL with any password masked, for messages."""
        return redacted(self._engine.url)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A connection inside one write transaction: committed on success, rolled back on any exception.

        Do not nest: on SQLite writers are serialised, so a transaction opened inside another waits forever.
        """
        if self._write_lock is None:
            async with self._writer.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._writer.begin() as conn:
            yield conn

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads; whatever it did is rolled back when the block ends."""
        async with self._engine.connect() as conn:
            yield conn

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _ping(self) -> None:
        try:
            async with self.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (OSError, DBAPIError) as exc:
            reason = getattr(exc, "orig", None) or exc
            raise DatabaseUnavailableError(f"cannot open database {self.url}: {reason}") from None
        except TypeError as exc:  # the driver refused a ?option= of the URL
            raise DatabaseUnavailableError(
                f"cannot open database {self.url}: unsupported URL option ({exc})"
            ) from None

    # --- schema version -----------------------------------------------------------------------------------------

    async def version(self) -> int:
        """The schema version of the database (0 when it has none yet)."""
        async with self.connect() as conn:
            exists = await conn.run_sync(lambda c: c.dialect.has_table(c, schema_version.name))
            return await _read_version(conn) if exists else 0

    async def migrate(self, target: int | None = None, migrations: Sequence[Migration] = MIGRATIONS) -> int:
        """Apply every pending step up to `target` (default: all), one transaction each; return the version."""
        latest = migrations[-1].version if migrations else 0
        target = latest if target is None else target
        if not 0 <= target <= latest:
            raise ValueError(f"schema version {target} is not between 0 and {latest}")
        current = await self._ensure_version_table(latest)
        for step in migrations:
            if current < step.version <= target:
                current = await self._apply(step, latest)
        return current

    async def _ensure_version_table(self, latest: int) -> int:
        async with self._migrating("prepare schema versioning"), self.transaction() as conn:
            await self._lock(conn)
            await conn.run_sync(lambda c: schema_version.create(c, checkfirst=True))
            await conn.execute(insert_ignore(conn, schema_version, "id").values(id=1, version=0))
            return self._check_known(await _read_version(conn), latest)

    async def _apply(self, step: Migration, latest: int) -> int:
        async with (
            self._migrating(f"apply schema step {step.version} ({step.description})"),
            self.transaction() as conn,
        ):
            await self._lock(conn)
            current = self._check_known(await _read_version(conn), latest)
            if current >= step.version:  # another process applied it meanwhile
                return current
            await conn.run_sync(step.apply)
            await conn.execute(
                update(schema_version).where(schema_version.c.id == 1).values(version=step.version)
            )
            return step.version

    @asynccontextmanager
    async def _migrating(self, what: str) -> AsyncIterator[None]:
        """Turn a database refusal during a migration (permissions, disk full, ...) into one clear error."""
        try:
            yield
        except DBAPIError as exc:
            reason = str(exc.orig).strip() or type(exc.orig).__name__
            raise DatabaseUnavailableError(f"cannot {what} on database {self.url}: {reason}") from None

    async def _lock(self, conn: AsyncConnection) -> None:
        # SQLite's BEGIN IMMEDIATE already serialises writers; PostgreSQL needs an explicit lock.
        if conn.dialect.name == "postgresql":
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=MIGRATION_LOCK))

    def _check_known(self, version: int, latest: int) -> int:
        if version > latest:
            raise SchemaVersionError(
                f"database {self.url} has schema version {version}, newer than this specai knows ({latest}); "
                "upgrade specai, or point [database] at another database"
            )
        return version


async def _read_version(conn: AsyncConnection) -> int:
    found = await conn.scalar(select(schema_version.c.version).where(schema_version.c.id == 1))
    return int(found or 0)
