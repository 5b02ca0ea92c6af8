"""A lease row with a fencing epoch: which one of the processes sharing a database runs the singleton jobs.

Why a row and not `pg_try_advisory_lock`: a session-level lock is stranded on a pooled backend behind a
transaction-mode pooler, and silently lost (two leaders) when its connection drops. A row works through any
pooler, and every decision uses the database's clock, never the processes' clocks:

- `claim` takes or renews the lease in one statement (`INSERT ... ON CONFLICT DO UPDATE ... WHERE the holder is
  this process or the lease has expired ... RETURNING epoch`). Each new tenure gets a higher epoch; a renewal
  keeps it.
- `fence` is what a job runs inside its own transaction: it locks the row `FOR SHARE` only while this tenure
  still holds it, else raises `LostLeadershipError`, rolling the job's transaction back. A takeover's UPDATE
  waits for that share lock, so a deposed leader's late write either commits before the next tenure starts or
  not at all.
- `release` (clean stop) expires the row now, so the next process takes over at once; the NOTIFY on
  `LEASE_CHANNEL` wakes the others to try.

SQLite serves one process per database file (the server locks the file), so there the lease is always held: the
same interface, no statements.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from specai.errors import SpecaiError
from specai.store.engine import Store
from specai.store.listener import encode
from specai.store.urls import is_postgres

LEASE_CHANNEL = "specai_leases"  # NOTIFY payload: the names of leases just released
APPLICATION_NAME = "specai leader"  # how the lease connection shows in pg_stat_activity
SQLITE_EPOCH = 1

# Runs inside a transaction and raises when that transaction must not commit (Term.fence).
Fence = Callable[[AsyncConnection], Awaitable[None]]

_CLAIM = text(
    """
    INSERT INTO leases AS l (name, holder, epoch, expires_at)
    VALUES (:name, :holder, 1, now() + make_interval(secs => :ttl))
    ON CONFLICT (name) DO UPDATE
    SET holder = excluded.holder,
        epoch = CASE
            WHEN l.holder = excluded.holder AND l.epoch = :epoch AND l.expires_at > now() THEN l.epoch
            ELSE l.epoch + 1
        END,
        expires_at = excluded.expires_at
    WHERE l.holder = excluded.holder OR l.expires_at <= now()
    RETURNING epoch
    """
)
_STATE = text(
    """
    SELECT holder, epoch, CAST(EXTRACT(EPOCH FROM expires_at - now()) AS double precision)
    FROM leases WHERE name = :name
    """
)
_RELEASE = text(
    """
    UPDATE leases SET expires_at = now()
    WHERE name = :name AND holder = :holder AND epoch = :epoch AND expires_at > now()
    """
)
_FENCE = text(
    """
    SELECT 1 FROM leases
    WHERE name = :name AND holder = :holder AND epoch = :epoch AND expires_at > clock_timestamp()
    FOR SHARE
    """
)


class LostLeadershipError(SpecaiError):
    """This process no longer holds the lease it acted under: what it was writing is rolled back."""

    code = "not_leader"
    status = 503


def holder_id(instance_id: str) -> str:
    """A holder name unique to this process: the mesh instance id, the pid and a random part (pids get reused)."""
    return f"{instance_id}/{os.getpid()}/{secrets.token_hex(4)}"


async def open_lease_store(url: URL, timeout_secs: float) -> Store:
    """A store of one connection of its own for the lease statements, so a renewal never waits behind requests
    for a pooled connection; every connect, checkout and statement is bounded by `timeout_secs`.

    No pre-ping: a connection that died is an error for the statement that finds it (its holder steps down),
    and the next statement connects again.
    """
    engine = create_async_engine(
        url,
        pool_size=1,
        max_overflow=0,
        pool_timeout=timeout_secs,
        connect_args={
            "timeout": timeout_secs,
            "command_timeout": timeout_secs,
            "server_settings": {"application_name": APPLICATION_NAME},
        },
    )
    return Store(engine)


@dataclass(frozen=True)
class Holding:
    """The lease row as the database shows it: who holds it, its epoch, and seconds left by the database's clock
    (zero or less: expired)."""

    holder: str | None
    epoch: int
    expires_in: float


@dataclass(frozen=True)
class Term:
    """One tenure of a lease: the epoch this process holds it under. `fence` refuses once the tenure is over."""

    lease: Lease
    epoch: int

    async def fence(self, conn: AsyncConnection) -> None:
        """Raise LostLeadershipError unless this tenure still holds the lease (call inside the job's
        transaction; it then holds off a takeover until that transaction ends)."""
        await self.lease.fence(conn, self.epoch)


class Lease:
    """The lease `name` as seen by `holder`, held `ttl_secs` past each claim; on SQLite always held."""

    def __init__(self, store: Store, name: str, holder: str, ttl_secs: float) -> None:
        if ttl_secs <= 0:
            raise ValueError("a lease needs a positive ttl")
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl = ttl_secs
        self.shared = is_postgres(store.engine.url)

    async def claim(self, renewing: Term | None = None) -> Term | None:
        """Take the lease, or keep `renewing` (the tenure this process believes it holds) for another `ttl`.

        Returns the tenure held now: `renewing`'s epoch when it was still valid, a higher epoch for a new tenure
        (this process held no tenure, or its tenure had expired). None when another process holds the lease.
        """
        if not self.shared:
            return Term(self, SQLITE_EPOCH)
        params = {
            "name": self.name,
            "holder": self.holder,
            "ttl": float(self.ttl),
            "epoch": None if renewing is None else renewing.epoch,
        }
        async with self.store.transaction() as conn:
            epoch = await conn.scalar(_CLAIM, params)
        return None if epoch is None else Term(self, int(epoch))

    async def state(self) -> Holding | None:
        """The row as it stands (None before anyone claimed it)."""
        if not self.shared:
            return Holding(self.holder, SQLITE_EPOCH, math.inf)
        async with self.store.connect() as conn:
            row = (await conn.execute(_STATE, {"name": self.name})).first()
        if row is None:
            return None
        return Holding(row[0], int(row[1]), float(row[2]))

    async def release(self, term: Term) -> bool:
        """End `term` now so another process can take over at once (and wake them); False when it had ended."""
        if not self.shared:
            return True
        params = {"name": self.name, "holder": self.holder, "epoch": term.epoch}
        async with self.store.transaction() as conn:
            ended = (await conn.execute(_RELEASE, params)).rowcount
            if ended:
                await conn.execute(
                    text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": LEASE_CHANNEL, "payload": encode([self.name])},
                )
        return bool(ended)

    async def fence(self, conn: AsyncConnection, epoch: int) -> None:
        """Raise LostLeadershipError unless tenure `epoch` of this holder is current (inside `conn`'s transaction,
        whichever store it belongs to)."""
        if not self.shared:
            return
        params = {"name": self.name, "holder": self.holder, "epoch": epoch}
        if await conn.scalar(_FENCE, params) is None:
            raise LostLeadershipError(
                f"this process no longer holds the '{self.name}' lease (epoch {epoch}); its write was rolled back"
            )
