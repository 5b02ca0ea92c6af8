"""The database every stateful feature shares: one async SQLAlchemy Core code path over SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    TypeDecorator,
    event,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.dml import Insert

from specai.config import Settings
from specai.errors import ConfigError, DatabaseUnavailableError, SchemaVersionError
from specai.files import ensure_private_dir

DB_FILENAME = "specai.db"
SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRES_DRIVER = "postgresql+asyncpg"
BUSY_TIMEOUT_MS = 10_000
PG_CONNECT_TIMEOUT_S = 10
_POSTGRES_SCHEMES = {"postgresql", "postgres", POSTGRES_DRIVER}
_SQLITE_SCHEMES = {"sqlite", SQLITE_DRIVER}
_URL_HELP = "use postgresql://user@host:port/db or sqlite:///path/to/file.db"
_MIGRATION_LOCK = 0x5EC_A1  # pg_advisory_xact_lock key: one migrator at a time per database
_WRITE_OPTION = "specai_write"


# --- column types -----------------------------------------------------------------------------------------------


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every engine (SQLite stores naive UTC text; naive input is refused)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: store timezone-aware datetimes only")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class JSONText(TypeDecorator[Any]):
    """A JSON value stored as text, so both engines keep exactly what was written."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(value, separators=(",", ":"), ensure_ascii=False)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else json.loads(value)


def utcnow() -> dt.datetime:
    """The current time as an aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


# --- the current schema (what queries use; migrations below build it step by step) ------------------------------

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
MESSAGE_ROLES = ("system", "user", "assistant", "tool")

metadata = MetaData(naming_convention=NAMING_CONVENTION)

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)


def _v1_session_tables(md: MetaData) -> tuple[Table, Table]:
    """`sessions` and `messages` as schema version 1 defines them (frozen: a later change gets its own step)."""
    sessions_table = Table(
        "sessions",
        md,
        Column("id", Text, primary_key=True),
        Column("owner", Text, nullable=False),
        Column("agent", Text, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Index(None, "owner", "updated_at"),
    )
    messages_table = Table(
        "messages",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("session_id", Text, ForeignKey("sessions.id", ondelete="CASCADE"), nullable=False),
        Column("role", Text, nullable=False),
        Column("content", Text, nullable=False),
        Column("tool_calls", JSONText, nullable=True),
        Column("tool_call_id", Text, nullable=True),
        Column("name", Text, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        CheckConstraint(f"role IN ({', '.join(repr(r) for r in MESSAGE_ROLES)})", name="role"),
        Index(None, "session_id", "id"),
    )
    return sessions_table, messages_table


# A 64-bit id on PostgreSQL; SQLite needs exactly INTEGER PRIMARY KEY for its rowid alias.
BigId = BigInteger().with_variant(Integer, "sqlite")
CHANGE_OPERATIONS = ("create", "update", "delete")
ENTITY_KINDS = ("node", "edge")


def _v2_graph_tables(md: MetaData) -> tuple[Table, Table, Table, Table]:
    """The knowledge graph as schema version 2 defines it (frozen: a later change gets its own step)."""
    nodes = Table(
        "graph_nodes",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("uid", Text, nullable=False, unique=True),
        Column("session_id", Text, nullable=False),
        Column("node_type", Text, nullable=False),
        Column("label", Text, nullable=False),
        Column("properties", JSONText, nullable=False),
        Column("version", Integer, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        Index(None, "session_id", "id"),
        Index(None, "session_id", "node_type", "id"),
    )
    edges = Table(
        "graph_edges",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("uid", Text, nullable=False, unique=True),
        Column("session_id", Text, nullable=False),
        Column("source_id", BigId, ForeignKey("graph_nodes.id", ondelete="CASCADE"), nullable=False),
        Column("target_id", BigId, ForeignKey("graph_nodes.id", ondelete="CASCADE"), nullable=False),
        Column("edge_type", Text, nullable=False),
        Column("predicate", Text, nullable=True),
        Column("properties", JSONText, nullable=True),
        Column("weight", Double, nullable=False),
        Column("version", Integer, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("updated_at", UTCDateTime, nullable=False),
        CheckConstraint("weight >= 0 AND weight <= 1", name="weight"),
        Index(None, "session_id", "id"),
        Index(None, "source_id"),
        Index(None, "target_id"),
    )
    changelog = Table(
        "graph_changelog",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("session_id", Text, nullable=False),
        Column("entity_type", Text, nullable=False),
        Column("entity_id", BigInteger, nullable=False),
        Column("entity_uid", Text, nullable=False),
        Column("operation", Text, nullable=False),
        Column("version", Integer, nullable=False),
        Column("data", JSONText, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        CheckConstraint(f"entity_type IN ({', '.join(repr(k) for k in ENTITY_KINDS)})", name="entity_type"),
        CheckConstraint(f"operation IN ({', '.join(repr(o) for o in CHANGE_OPERATIONS)})", name="operation"),
        Index(None, "session_id", "id"),
        Index(None, "created_at"),
        sqlite_autoincrement=True,  # ids are never reused, even after the newest rows are pruned
    )
    changelog_state = Table(
        "graph_changelog_state",
        md,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("pruned_through", BigInteger, nullable=False),
        CheckConstraint("id = 1", name="single_row"),
    )
    return nodes, edges, changelog, changelog_state


def _v3_mesh_tables(md: MetaData) -> tuple[Table, Table, Table]:
    """Mesh members and their durable message queue as schema version 3 defines them (frozen)."""
    members = Table(
        "mesh_members",
        md,
        Column("instance_id", Text, primary_key=True),
        Column("hostname", Text, nullable=False),
        Column("port", Integer, nullable=False),
        Column("base_url", Text, nullable=False),
        Column("fingerprint", Text, nullable=True),
        Column("capabilities", JSONText, nullable=False),
        Column("agent_profiles", JSONText, nullable=False),
        Column("registered_at", UTCDateTime, nullable=False),
        Column("last_heartbeat", UTCDateTime, nullable=False),
    )
    return (members, *_v3_queue_tables(md))


def _v3_queue_tables(md: MetaData) -> tuple[Table, Table]:
    """The mesh message queue as schema version 3 defines it (frozen; unchanged since)."""
    mesh_messages = Table(
        "mesh_messages",
        md,
        Column("id", BigId, primary_key=True, autoincrement=True),
        Column("message_id", Text, nullable=False, unique=True),
        Column("source_instance", Text, nullable=False),
        Column("target_instance", Text, nullable=True),
        Column("message_type", JSONText, nullable=False),
        Column("payload", JSONText, nullable=True),
        Column("correlation_id", Text, nullable=True),
        Column("created_at", UTCDateTime, nullable=False),
        Index(None, "created_at"),
    )
    deliveries = Table(
        "mesh_deliveries",
        md,
        Column("message_id", BigId, ForeignKey("mesh_messages.id", ondelete="CASCADE"), primary_key=True),
        Column("recipient", Text, primary_key=True),
        Index(None, "recipient", "message_id"),
    )
    return mesh_messages, deliveries


def _v4_access_tables(md: MetaData) -> tuple[Table, Table, Table, Table]:
    """Who owns what, as schema version 4 defines it (frozen): API keys, revoked tokens, graph owners and shares."""
    api_keys = Table(
        "api_keys",
        md,
        Column("id", Text, primary_key=True),
        Column("owner_id", Text, nullable=False),
        Column("owner_name", Text, nullable=False),
        Column("name", Text, nullable=False),
        Column("key_hash", Text, nullable=False),
        Column("scope", Text, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Column("expires_at", UTCDateTime, nullable=True),
        Column("revoked_at", UTCDateTime, nullable=True),
        Index(None, "owner_id"),
    )
    revoked_tokens = Table(
        "revoked_tokens",
        md,
        Column("jti", Text, primary_key=True),
        Column("owner_id", Text, nullable=False),
        Column("expires_at", UTCDateTime, nullable=False),
        Index(None, "expires_at"),
    )
    graph_sessions = Table(
        "graph_sessions",
        md,
        Column("session_id", Text, primary_key=True),
        Column("owner_id", Text, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
        Index(None, "owner_id"),
    )
    graph_shares = Table(
        "graph_shares",
        md,
        Column(
            "session_id", Text, ForeignKey("graph_sessions.session_id", ondelete="CASCADE"), primary_key=True
        ),
        Column("user_id", Text, primary_key=True),
        Column("user_name", Text, nullable=False),
        Column("writable", Boolean, nullable=False),
        Index(None, "user_id"),
    )
    return api_keys, revoked_tokens, graph_sessions, graph_shares


def _v4_mesh_members(md: MetaData) -> Table:
    """`mesh_members` since version 4: bound to the account (`owner_id`) that registered it; NULL = before v4."""
    return Table(
        "mesh_members",
        md,
        Column("instance_id", Text, primary_key=True),
        Column("hostname", Text, nullable=False),
        Column("port", Integer, nullable=False),
        Column("base_url", Text, nullable=False),
        Column("fingerprint", Text, nullable=True),
        Column("capabilities", JSONText, nullable=False),
        Column("agent_profiles", JSONText, nullable=False),
        Column("registered_at", UTCDateTime, nullable=False),
        Column("last_heartbeat", UTCDateTime, nullable=False),
        Column("owner_id", Text, nullable=True),
    )


# The current schema; once a step alters one of these tables, define the new shape here separately.
sessions, messages = _v1_session_tables(metadata)
graph_nodes, graph_edges, graph_changelog, graph_changelog_state = _v2_graph_tables(metadata)
mesh_members = _v4_mesh_members(metadata)
mesh_messages, mesh_deliveries = _v3_queue_tables(metadata)
api_keys, revoked_tokens, graph_sessions, graph_shares = _v4_access_tables(metadata)


# --- migrations -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migration:
    """One schema step: `apply` runs on a sync connection inside the step's own transaction."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _v1_sessions(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    _v1_session_tables(md)
    md.create_all(conn)


def _v2_graph(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    _v2_graph_tables(md)
    md.create_all(conn)


def _v3_mesh(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    _v3_mesh_tables(md)
    md.create_all(conn)


def _v4_access(conn: Connection) -> None:
    md = MetaData(naming_convention=NAMING_CONVENTION)
    _v4_access_tables(md)
    md.create_all(conn)
    conn.exec_driver_sql("ALTER TABLE mesh_members ADD COLUMN owner_id TEXT")


# Append new steps at the end; never edit or reorder a released step (upgrade tests rely on them).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "sessions and messages", _v1_sessions),
    Migration(2, "knowledge graph and its changelog", _v2_graph),
    Migration(3, "mesh members and message queue", _v3_mesh),
    Migration(
        4, "access model: API keys, revoked tokens, graph owners and shares, mesh member owners", _v4_access
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


# --- URLs -------------------------------------------------------------------------------------------------------


def database_url(settings: Settings) -> str:
    """The async SQLAlchemy URL for `[database]`: `url` when set, else SQLite at `path` or `$SPECAI_HOME/specai.db`."""
    return _database_url(settings).render_as_string(hide_password=False)


def _database_url(settings: Settings) -> URL:
    db = settings.database
    if db.url:
        return _normalize(db.url, settings)
    path = Path(db.path).expanduser() if db.path else settings.home / DB_FILENAME
    return URL.create(SQLITE_DRIVER, database=str(path))


def _normalize(raw: str, settings: Settings) -> URL:
    where = f"{settings.config_path}: [database] url" if settings.config_path else "[database] url"
    try:
        url = make_url(raw.strip())
    except (ArgumentError, ValueError):
        raise ConfigError(f"{where}: not a valid database URL; {_URL_HELP}") from None
    scheme = url.drivername.lower()
    if scheme in _POSTGRES_SCHEMES:
        return _asyncpg_url(url)
    if scheme in _SQLITE_SCHEMES:
        database = str(Path(url.database).expanduser()) if url.database else url.database
        return url.set(drivername=SQLITE_DRIVER, database=database)
    shown = url.render_as_string(hide_password=True)
    raise ConfigError(f"{where}: unsupported database '{scheme}' in {shown}; {_URL_HELP}")


def _asyncpg_url(url: URL) -> URL:
    """Switch to asyncpg and translate libpq's `sslmode` to asyncpg's `ssl`."""
    query = dict(url.query)
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    return url.set(drivername=POSTGRES_DRIVER, query=query)


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    name = url.database or ""
    if name in ("", ":memory:") or name.startswith("file:"):
        return None
    return Path(name)


def _prepare_sqlite_file(path: Path) -> None:
    """Create the folder (0700) and an empty file (0600) so SQLite and its WAL inherit owner-only permissions."""
    try:
        ensure_private_dir(path.parent)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
    except OSError as exc:
        raise DatabaseUnavailableError(f"cannot create database file {path}: {exc.strerror or exc}") from None


# --- engine set-up ----------------------------------------------------------------------------------------------


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


def _create_engine(url: URL) -> AsyncEngine:
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_on_begin)
        return engine
    connect_args = {} if "timeout" in url.query else {"timeout": PG_CONNECT_TIMEOUT_S}
    return create_async_engine(url, pool_pre_ping=True, connect_args=connect_args)


def insert_ignore(conn: AsyncConnection | Connection, table: Table, *key: str) -> Insert:
    """`INSERT ... ON CONFLICT (key) DO NOTHING` for the connection's engine."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    return dialect_insert(table).on_conflict_do_nothing(index_elements=list(key) or None)


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
        """Open the configured database (creating SQLite's folder 0700) and bring its schema up to date."""
        return await cls.open_url(_database_url(settings), migrate=migrate)

    @classmethod
    async def open_url(cls, url: str | URL, *, migrate: bool = True) -> Store:
        """Open the database at an async SQLAlchemy URL, e.g. the result of `database_url()`."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and (path := _sqlite_file(parsed)) is not None:
            _prepare_sqlite_file(path)
        store = cls(_create_engine(parsed))
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
    def dialect(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    @property
    def url(self) -> str:
        """The database URL with any password masked, for messages."""
        return self._engine.url.render_as_string(hide_password=True)

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
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=_MIGRATION_LOCK))

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
