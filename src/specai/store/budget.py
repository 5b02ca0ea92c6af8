"""The PostgreSQL connection budget: what this server may open, against what the database server allows.

Each server process may hold `[database] pool_size` pooled connections, `max_overflow` more under load, and two
of its own: the LISTEN connection (store/listener.py) and the leader lease's (server/leader.py); `--workers N`
multiplies that by N. PostgreSQL refuses clients
beyond `max_connections - superuser_reserved_connections` (- `reserved_connections` from PostgreSQL 16 on) with
"too many clients already", so the server warns at start when its need plus what the other specai processes
hold now (seen in pg_stat_activity by application name) would not fit. A warning, not a refusal: a pool only
grows to its maximum under load, and the other processes' figures change while this one runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

DEDICATED_PER_PROCESS = 2  # the LISTEN and the lease connection each process keeps outside its pool
PEER_NAMES = "application_name = 'specai' OR application_name LIKE 'specai %'"  # pooled, listener, ...


@dataclass(frozen=True)
class ServerLimits:
    """What a PostgreSQL server allows, and the connections other specai processes hold on it now."""

    max_connections: int
    reserved: int  # superuser_reserved_connections (+ reserved_connections on PostgreSQL 16+)
    others: int  # connections of other specai processes (application name specai...), this one excluded


@dataclass(frozen=True)
class Budget:
    """This server's connection need against a server's limits."""

    pool_size: int
    max_overflow: int
    workers: int
    limits: ServerLimits

    @property
    def per_process(self) -> int:
        """The most connections one server process opens."""
        return self.pool_size + self.max_overflow + DEDICATED_PER_PROCESS

    @property
    def need(self) -> int:
        """The most connections this server (all its workers) opens."""
        return self.per_process * self.workers

    @property
    def usable(self) -> int:
        """The connections PostgreSQL gives to ordinary clients."""
        return self.limits.max_connections - self.limits.reserved

    @property
    def exceeded(self) -> bool:
        """True when this server at its most, plus the other specai processes now, do not fit."""
        return self.need + self.limits.others > self.usable

    def warning(self) -> str:
        """One line: the formula with its figures, and what to change."""
        limits = self.limits
        return (
            f"PostgreSQL may run out of connections: this server opens up to "
            f"(pool_size {self.pool_size} + max_overflow {self.max_overflow} + 1 listener + 1 leader) "
            f"x {self.workers} worker{'s' if self.workers != 1 else ''} = {self.need}, other specai processes "
            f"hold {limits.others} now, and {self.need + limits.others} > {self.usable} usable "
            f"(max_connections {limits.max_connections} - {limits.reserved} reserved); lower [database] "
            "pool_size or max_overflow or --workers, or raise max_connections in postgresql.conf"
        )


def check(pool_size: int, max_overflow: int, workers: int, limits: ServerLimits) -> str | None:
    """The warning when the budget is exceeded, else None."""
    budget = Budget(pool_size, max_overflow, workers, limits)
    return budget.warning() if budget.exceeded else None


async def read_limits(conn: AsyncConnection) -> ServerLimits:
    """Read `max_connections`, the reserved slots and the other specai processes' connections over `conn`."""
    max_connections = int(await conn.scalar(text("SELECT current_setting('max_connections')::int")) or 0)
    reserved = await conn.scalar(
        text(
            "SELECT current_setting('superuser_reserved_connections')::int"
            " + coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0)"
        )
    )
    others = await conn.scalar(
        text(f"SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND ({PEER_NAMES})")
    )
    return ServerLimits(max_connections, int(reserved or 0), int(others or 0))
