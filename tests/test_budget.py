"""The PostgreSQL connection budget: the arithmetic, its one-line warning, and the figures read from a real server."""

from __future__ import annotations

from pathlib import Path

import pytest
from databases import pg_admin
from sqlalchemy import text
from sqlalchemy.engine import make_url

from specai.config import DatabaseSettings, Settings
from specai.store import Store
from specai.store.budget import DEDICATED_PER_PROCESS, Budget, ServerLimits, check, read_limits
from specai.store.engine import APPLICATION_NAME
from specai.store.urls import POSTGRES_DRIVER

LIMITS = ServerLimits(max_connections=100, reserved=3, others=0)


def test_each_process_needs_its_pool_its_overflow_its_listener_and_its_lease_connection() -> None:
    budget = Budget(pool_size=5, max_overflow=5, workers=2, limits=LIMITS)
    assert DEDICATED_PER_PROCESS == 2
    assert budget.per_process == 12
    assert budget.need == 24
    assert budget.usable == 97
    assert not budget.exceeded


def test_the_budget_is_exceeded_only_beyond_the_usable_connections() -> None:
    fits = Budget(5, 5, 8, ServerLimits(100, 3, others=97 - 96))  # 96 + 1 = 97: exactly full
    assert fits.need == 96
    assert not fits.exceeded
    assert check(5, 5, 8, fits.limits) is None
    over = Budget(5, 5, 8, ServerLimits(100, 3, others=2))
    assert over.exceeded
    assert check(5, 5, 8, over.limits) == over.warning()


def test_other_processes_and_reserved_slots_count() -> None:
    assert Budget(40, 0, 2, ServerLimits(100, 3, 0)).need == 84
    assert not Budget(40, 0, 2, ServerLimits(100, 3, 13)).exceeded  # 84 + 13 = 97
    assert Budget(40, 0, 2, ServerLimits(100, 3, 14)).exceeded
    assert not Budget(40, 0, 2, ServerLimits(100, 16, 0)).exceeded  # 84 = 100 - 16
    assert Budget(40, 0, 2, ServerLimits(100, 17, 0)).exceeded


def test_the_warning_gives_the_formula_with_its_figures_and_what_to_change() -> None:
    warning = Budget(1000, 5, 2, ServerLimits(100, 3, 7)).warning()
    assert warning == (
        "PostgreSQL may run out of connections: this server opens up to (pool_size 1000 + max_overflow 5 + "
        "1 listener + 1 leader) x 2 workers = 2014, other specai processes hold 7 now, and 2021 > 97 usable "
        "(max_connections 100 - 3 reserved); lower [database] pool_size or max_overflow or --workers, or raise "
        "max_connections in postgresql.conf"
    )
    assert "x 1 worker = " in Budget(1000, 5, 1, LIMITS).warning()


@pytest.mark.anyio
async def test_the_figures_come_from_the_server_and_count_other_specai_processes(
    pg_url: str, tmp_path: Path
) -> None:
    await pg_admin(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    settings = Settings(home=tmp_path, database=DatabaseSettings(url=pg_url, pool_size=2, max_overflow=1))
    checking = await Store.open(settings)
    other = await Store.open_url(make_url(pg_url).set(drivername=POSTGRES_DRIVER))  # another process's pool
    try:
        async with other.connect() as held, checking.connect() as conn:
            other_pid = await held.scalar(text("SELECT pg_backend_pid()"))
            name = await conn.scalar(text("SELECT current_setting('application_name')"))
            limits = await read_limits(conn)
            shown = int(await conn.scalar(text("SHOW max_connections")) or 0)
            reserved = int(await conn.scalar(text("SHOW superuser_reserved_connections")) or 0)
            seen = await conn.scalar(
                text("SELECT application_name FROM pg_stat_activity WHERE pid = :pid").bindparams(
                    pid=other_pid
                )
            )
        assert name == APPLICATION_NAME
        assert seen == APPLICATION_NAME  # how a process sees its peers
        assert limits.max_connections == shown
        assert limits.reserved == reserved  # PostgreSQL 15 here: no reserved_connections setting yet
        assert limits.others >= 1  # the other store's connection at least; this check's own is not counted
        assert checking.engine.pool.size() == 2  # type: ignore[attr-defined]
        assert other.engine.pool.size() == 5  # type: ignore[attr-defined]  # open_url keeps the defaults
    finally:
        await other.close()
        await checking.close()
