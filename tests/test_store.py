"""The storage layer on real SQLite and PostgreSQL: URLs, files, versioned migrations, transactions, timestamps."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import stat
from pathlib import Path

import pytest
from databases import pg_admin
from sqlalchemy import (
    Column,
    Connection,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import StatementError

import specai
from specai.config import DatabaseSettings, Settings
from specai.errors import ConfigError, DatabaseUnavailableError, SchemaVersionError
from specai.store import Store, locks
from specai.store.migrations import MIGRATIONS, SCHEMA_VERSION, Migration
from specai.store.schema import metadata, schema_version, sessions
from specai.store.types import JSONText, UTCDateTime
from specai.store.urls import database_url

pytestmark = pytest.mark.anyio

UTC_NOON = dt.datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


async def table_names(store: Store) -> set[str]:
    async with store.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def set_version(store: Store, version: int) -> None:
    async with store.transaction() as conn:
        await conn.execute(update(schema_version).values(version=version))


def url_text(settings: Settings) -> str:
    """`database_url` written out in full, password included, as the engine will receive it."""
    return database_url(settings).render_as_string(hide_password=False)


# --- URLs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/specai",
            "postgresql+asyncpg://postgres@127.0.0.1:5432/specai",
        ),
        (
            "postgres://bob:s%40cret@db.example:6543/app",
            "postgresql+asyncpg://bob:s%40cret@db.example:6543/app",
        ),
        ("postgresql+asyncpg://bob@db/app", "postgresql+asyncpg://bob@db/app"),
        ("postgresql://bob@db/app?sslmode=require", "postgresql+asyncpg://bob@db/app?ssl=require"),
        ("  postgresql://bob@db/app  ", "postgresql+asyncpg://bob@db/app"),
        ("sqlite:////var/lib/specai/state.db", "sqlite+aiosqlite:////var/lib/specai/state.db"),
        ("sqlite+aiosqlite:////srv/x.db", "sqlite+aiosqlite:////srv/x.db"),
    ],
)
def test_database_url_converts_configured_urls(given: str, expected: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database=DatabaseSettings(url=given))
    assert url_text(settings) == expected


def test_database_url_expands_tilde_in_sqlite_urls(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database=DatabaseSettings(url="sqlite:///~/specai/x.db"))
    assert url_text(settings) == f"sqlite+aiosqlite:///{Path.home()}/specai/x.db"


def test_database_url_defaults_to_sqlite_in_home(tmp_path: Path) -> None:
    assert url_text(Settings(home=tmp_path)) == f"sqlite+aiosqlite:///{tmp_path}/specai.db"


def test_database_url_uses_database_path(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database=DatabaseSettings(path=tmp_path / "elsewhere" / "my.db"))
    assert url_text(settings) == f"sqlite+aiosqlite:///{tmp_path}/elsewhere/my.db"


def test_database_url_prefers_url_over_path(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path, database=DatabaseSettings(path=tmp_path / "x.db", url="postgres://u@h/d")
    )
    assert url_text(settings) == "postgresql+asyncpg://u@h/d"


@pytest.mark.parametrize(
    "given",
    [
        "mysql://u:topsecret@h/d",
        "postgresql+psycopg2://u@h/d",
        "oracle://h/d",
        "not a url",
        "http://example.com/",
        "postgresql://u:topsecret@h:port/d",
    ],
)
def test_database_url_refuses_other_schemes(given: str, tmp_path: Path) -> None:
    config = tmp_path / "spec-ai.config.toml"
    settings = Settings(home=tmp_path, config_path=config, database=DatabaseSettings(url=given))
    with pytest.raises(ConfigError) as caught:
        database_url(settings)
    message = caught.value.message
    assert "[database] url" in message
    assert str(config) in message
    assert "postgresql://user@host:port/db" in message
    assert "topsecret" not in message


# --- SQLite file ----------------------------------------------------------------------------------------------


async def test_sqlite_file_is_created_private_under_home_with_wal(tmp_path: Path) -> None:
    home = tmp_path / "new-home"
    async with await Store.open(Settings(home=home)) as store, store.connect() as conn:
        journal = await conn.scalar(text("PRAGMA journal_mode"))
        foreign_keys = await conn.scalar(text("PRAGMA foreign_keys"))
        busy_timeout = await conn.scalar(text("PRAGMA busy_timeout"))
    db = home / "specai.db"
    assert db.is_file()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert (journal, foreign_keys) == ("wal", 1)
    assert busy_timeout >= 1000


async def test_sqlite_database_path_outside_home_gets_a_private_folder(tmp_path: Path) -> None:
    path = tmp_path / "data" / "nested" / "state.db"
    async with await Store.open(Settings(home=tmp_path / "h", database=DatabaseSettings(path=path))):
        pass
    assert path.is_file()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert not (tmp_path / "h").exists()


async def test_sqlite_path_with_url_special_characters(tmp_path: Path) -> None:
    path = tmp_path / "odd?name#1" / "my db%20.db"
    async with await Store.open(Settings(home=tmp_path, database=DatabaseSettings(path=path))) as store:
        assert await store.version() == SCHEMA_VERSION
    assert path.is_file()


async def test_sqlite_garbage_file_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "broken.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseUnavailableError, match=f"cannot open database .*{path.name}.*not a database"):
        await Store.open(Settings(home=tmp_path, database=DatabaseSettings(path=path)))
    assert path.read_bytes() == b"this is not a database" * 100


async def test_sqlite_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailableError, match="cannot create database file"):
        await Store.open(Settings(home=tmp_path, database=DatabaseSettings(path=tmp_path)))


# --- PostgreSQL connection failures --------------------------------------------------------------------------


async def test_unreachable_postgresql_is_refused_without_leaking_the_password(tmp_path: Path) -> None:
    url = "postgresql://postgres:hunter2@127.0.0.1:1/specai"
    with pytest.raises(DatabaseUnavailableError) as caught:
        await Store.open(Settings(home=tmp_path, database=DatabaseSettings(url=url)))
    assert "cannot open database postgresql+asyncpg://postgres:***@127.0.0.1:1/specai" in caught.value.message
    assert "hunter2" not in caught.value.message


async def test_unknown_postgresql_url_option_is_refused(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:5432/specai?colour=blue"
    with pytest.raises(DatabaseUnavailableError, match=r"unsupported URL option .*colour"):
        await Store.open(Settings(home=tmp_path, database=DatabaseSettings(url=url)))


async def test_missing_postgresql_database_is_refused(tmp_path: Path, pg_url: str) -> None:
    url = make_url(pg_url).set(database=f"specai_missing_{secrets.token_hex(4)}").render_as_string(False)
    with pytest.raises(DatabaseUnavailableError, match="does not exist"):
        await Store.open(Settings(home=tmp_path, database=DatabaseSettings(url=url)))


async def test_migration_refused_by_postgresql_is_reported_clearly(tmp_path: Path, pg_url: str) -> None:
    role = f"specai_nocreate_{secrets.token_hex(4)}"
    # A fresh public schema is owned by the admin and grants no CREATE to other roles.
    await pg_admin(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    await pg_admin(pg_url, f'CREATE ROLE "{role}" LOGIN; GRANT USAGE ON SCHEMA public TO "{role}"')
    try:
        url = make_url(pg_url).set(username=role, password=None).render_as_string(hide_password=False)
        with pytest.raises(DatabaseUnavailableError) as caught:
            await Store.open(Settings(home=tmp_path, database=DatabaseSettings(url=url)))
        assert "cannot prepare schema versioning on database postgresql+asyncpg://" in caught.value.message
        assert "permission denied for schema public" in caught.value.message
    finally:
        await pg_admin(pg_url, f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


# --- migrations -------------------------------------------------------------------------------------------------


def test_migration_versions_are_contiguous_from_one() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len(MIGRATIONS) == SCHEMA_VERSION


async def test_migrate_creates_tables_and_sets_version(store: Store) -> None:
    assert await store.version() == SCHEMA_VERSION
    assert await table_names(store) >= {"schema_version", "sessions", "messages"}
    async with store.connect() as conn:
        rows = (await conn.execute(select(schema_version))).all()
    assert [tuple(r) for r in rows] == [(1, SCHEMA_VERSION)]


async def test_migrated_schema_matches_the_metadata(store: Store) -> None:
    def shape(conn: Connection) -> dict[str, object]:
        inspector = inspect(conn)
        return {
            name: (
                sorted((c["name"], c["nullable"]) for c in inspector.get_columns(name)),
                # PostgreSQL also reports the index behind each unique constraint: compare constraints instead.
                sorted(
                    i["name"] or "" for i in inspector.get_indexes(name) if not i.get("duplicates_constraint")
                ),
                sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(name)),
                sorted(
                    (fk["referred_table"], fk["options"].get("ondelete"))
                    for fk in inspector.get_foreign_keys(name)
                ),
            )
            for name in metadata.tables
        }

    expected = {
        table.name: (
            sorted((c.name, c.nullable) for c in table.columns),
            sorted(str(i.name) for i in table.indexes),
            sorted(
                tuple(c.name for c in u.columns) for u in table.constraints if isinstance(u, UniqueConstraint)
            ),
            sorted((fk.column.table.name, fk.ondelete) for fk in table.foreign_keys),
        )
        for table in metadata.tables.values()
    }
    async with store.connect() as conn:
        actual = await conn.run_sync(shape)
    assert actual == expected


async def test_migrate_twice_is_a_no_op_and_keeps_data(db_settings: Settings) -> None:
    async with await Store.open(db_settings) as store:
        async with store.transaction() as conn:
            await conn.execute(
                insert(sessions).values(
                    id="s1", owner="a", agent="x", created_at=UTC_NOON, updated_at=UTC_NOON
                )
            )
        assert await store.migrate() == SCHEMA_VERSION
        assert await store.migrate() == SCHEMA_VERSION
    async with await Store.open(db_settings) as store:
        assert await store.version() == SCHEMA_VERSION
        async with store.connect() as conn:
            assert await conn.scalar(select(func.count()).select_from(sessions)) == 1


async def test_open_without_migrating_then_migrate_step_by_step(db_settings: Settings) -> None:
    async with await Store.open(db_settings, migrate=False) as store:
        assert await store.version() == 0
        assert "sessions" not in await table_names(store)
        assert await store.migrate(target=0) == 0
        assert "sessions" not in await table_names(store)
        assert await store.migrate() == SCHEMA_VERSION
        assert "sessions" in await table_names(store)
        with pytest.raises(ValueError, match="not between 0 and"):
            await store.migrate(target=SCHEMA_VERSION + 1)


async def test_database_newer_than_the_code_is_refused(db_settings: Settings) -> None:
    async with await Store.open(db_settings) as store:
        await set_version(store, SCHEMA_VERSION + 1)
    with pytest.raises(SchemaVersionError) as caught:
        await Store.open(db_settings)
    assert isinstance(caught.value, ConfigError)
    assert f"schema version {SCHEMA_VERSION + 1}" in caught.value.message
    assert f"({SCHEMA_VERSION})" in caught.value.message
    assert "upgrade specai" in caught.value.message
    async with await Store.open(db_settings, migrate=False) as store:
        assert await store.version() == SCHEMA_VERSION + 1  # refused, not touched


def _create_then_fail(conn: Connection) -> None:
    Table("half_done", MetaData(), Column("x", Text)).create(conn)
    raise RuntimeError("step failed halfway")


async def test_failed_step_rolls_back_its_ddl_and_version(store: Store) -> None:
    steps = (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "broken", _create_then_fail))
    with pytest.raises(RuntimeError, match="halfway"):
        await store.migrate(migrations=steps)
    assert await store.version() == SCHEMA_VERSION
    assert "half_done" not in await table_names(store)


async def test_upgrade_keeps_existing_data(db_settings: Settings) -> None:
    def add_note_column(conn: Connection) -> None:
        conn.execute(text("ALTER TABLE sessions ADD COLUMN note TEXT"))
        conn.execute(text("UPDATE sessions SET note = 'migrated'"))

    steps = (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "session notes", add_note_column))
    async with await Store.open(db_settings) as store:
        async with store.transaction() as conn:
            await conn.execute(
                insert(sessions).values(
                    id="old", owner="a", agent="x", created_at=UTC_NOON, updated_at=UTC_NOON
                )
            )
        assert await store.migrate(migrations=steps) == SCHEMA_VERSION + 1
        assert await store.migrate(migrations=steps) == SCHEMA_VERSION + 1
        async with store.connect() as conn:
            row = (await conn.execute(text("SELECT id, owner, note FROM sessions"))).one()
            created = await conn.scalar(select(sessions.c.created_at))
    assert tuple(row) == ("old", "a", "migrated")
    assert created == UTC_NOON


async def test_concurrent_openers_migrate_once(db_settings: Settings) -> None:
    stores = await asyncio.gather(*(Store.open(db_settings) for _ in range(4)))
    try:
        assert [await s.version() for s in stores] == [SCHEMA_VERSION] * 4
    finally:
        for opened in stores:
            await opened.close()


# --- transactions and types -------------------------------------------------------------------------------------


async def test_transaction_commits_or_rolls_back(store: Store) -> None:
    values = {"owner": "a", "agent": "x", "created_at": UTC_NOON, "updated_at": UTC_NOON}
    async with store.transaction() as conn:
        await conn.execute(insert(sessions).values(id="kept", **values))
    with pytest.raises(RuntimeError):  # noqa: PT012 (the raise inside the transaction is the test)
        async with store.transaction() as conn:
            await conn.execute(insert(sessions).values(id="lost", **values))
            raise RuntimeError("abort")
    async with store.connect() as conn:
        assert list(await conn.scalars(select(sessions.c.id))) == ["kept"]


async def test_concurrent_write_transactions_all_commit(store: Store) -> None:
    async def write(i: int) -> None:
        async with store.transaction() as conn:
            count = await conn.scalar(select(func.count()).select_from(sessions))
            await asyncio.sleep(0.001)
            now = UTC_NOON + dt.timedelta(seconds=i)
            await conn.execute(
                insert(sessions).values(
                    id=f"s{i}", owner=str(count), agent="x", created_at=now, updated_at=now
                )
            )

    await asyncio.gather(*(write(i) for i in range(25)))
    async with store.connect() as conn:
        owners = sorted(int(o) for o in await conn.scalars(select(sessions.c.owner)))
    assert len(owners) == 25
    if store.engine.dialect.name == "sqlite":  # BEGIN IMMEDIATE: each writer saw every earlier commit
        assert owners == list(range(25))


async def test_timestamps_read_back_as_aware_utc(store: Store) -> None:
    paris = dt.timezone(dt.timedelta(hours=2))
    local = dt.datetime(2024, 3, 1, 14, 0, 0, 123456, tzinfo=paris)
    async with store.transaction() as conn:
        await conn.execute(
            insert(sessions).values(id="t", owner="a", agent="x", created_at=local, updated_at=UTC_NOON)
        )
    async with store.connect() as conn:
        created, updated = (await conn.execute(select(sessions.c.created_at, sessions.c.updated_at))).one()
    for value in (created, updated):
        assert value.tzinfo is not None
        assert value.utcoffset() == dt.timedelta(0)
        assert value == UTC_NOON
    assert created.isoformat() == "2024-03-01T12:00:00.123456+00:00"


async def test_timestamp_order_survives_storage(store: Store) -> None:
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    stamps = [
        base + dt.timedelta(microseconds=1),
        base + dt.timedelta(days=400),
        base,
        base + dt.timedelta(hours=1),
    ]
    async with store.transaction() as conn:
        for i, stamp in enumerate(stamps):
            await conn.execute(
                insert(sessions).values(id=f"o{i}", owner="a", agent="x", created_at=stamp, updated_at=stamp)
            )
    async with store.connect() as conn:
        ordered = list(await conn.scalars(select(sessions.c.created_at).order_by(sessions.c.created_at)))
    assert ordered == sorted(stamps)


async def test_naive_timestamps_are_refused(store: Store) -> None:
    with pytest.raises(StatementError, match="naive datetime"):  # noqa: PT012 (the insert in a transaction raises)
        async with store.transaction() as conn:
            naive = dt.datetime(2024, 1, 1)
            await conn.execute(
                insert(sessions).values(id="n", owner="a", agent="x", created_at=naive, updated_at=naive)
            )


async def test_type_decorators_round_trip_none_and_json(store: Store) -> None:
    scratch = MetaData()
    table = Table(
        "scratch",
        scratch,
        Column("id", Text, primary_key=True),
        Column("at", UTCDateTime),
        Column("doc", JSONText),
    )
    value = {
        "name": "calculator",
        "arguments": {"expression": "6*7"},
        "note": "héllo ✓",
        "list": [1, 2.5, None],
    }
    async with store.transaction() as conn:
        await conn.run_sync(scratch.create_all)
        await conn.execute(
            insert(table), [{"id": "a", "at": None, "doc": None}, {"id": "b", "at": UTC_NOON, "doc": value}]
        )
    async with store.connect() as conn:
        rows = {r.id: (r.at, r.doc) for r in await conn.execute(select(table))}
    assert rows == {"a": (None, None), "b": (UTC_NOON, value)}


# --- advisory locks ---------------------------------------------------------------------------------------------


def test_every_advisory_lock_key_lives_in_store_locks() -> None:
    package = Path(specai.__file__).parent
    takers = [
        p for p in package.rglob("*.py") if "pg_advisory" in p.read_text() and p != Path(locks.__file__)
    ]
    assert len(takers) >= 2  # migrations and graph writes
    for path in takers:
        assert "from specai.store.locks import" in path.read_text(), (
            f"{path} takes a lock key not in store/locks.py"
        )
    keys = [value for name, value in vars(locks).items() if name.endswith("_LOCK")]
    assert len(keys) == len(set(keys)) >= 2
