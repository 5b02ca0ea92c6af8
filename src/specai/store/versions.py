"""Change counters that tell every process sharing the database to reload a cache: users, API keys, revocations.

A write that changes what a cache holds calls `bump` in its own transaction; on PostgreSQL the same transaction
sends a NOTIFY on `VERSION_CHANNEL`, delivered at commit (these writes are rare: logins and token checks never
bump). Each process's `VersionWatcher` re-reads the counters when woken and every `poll_secs` anyway, so a lost
notification delays a reload by at most that long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy import select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.store.engine import Store
from specai.store.listener import encode
from specai.store.schema import shared_versions

VERSION_CHANNEL = "specai_versions"
POLL_SECS = 0.5
log = logging.getLogger("specai.store")
Reload = Callable[[], Awaitable[None]]


async def bump(conn: AsyncConnection, *names: str) -> None:
    """Move the counters of `names` on, in the caller's transaction, and wake the other processes at its commit."""
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    for name in names:
        await conn.execute(
            dialect_insert(shared_versions)
            .values(name=name, version=1)
            .on_conflict_do_update(index_elements=["name"], set_={"version": shared_versions.c.version + 1})
        )
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": VERSION_CHANNEL, "payload": encode(list(names))},
        )


async def read(conn: AsyncConnection) -> dict[str, int]:
    """Every counter by name (a name never bumped is absent)."""
    rows = await conn.execute(select(shared_versions.c.name, shared_versions.c.version))
    return {str(name): int(version) for name, version in rows.all()}


class VersionWatcher:
    """Runs each name's reloads when its counter moved; woken by `wake` (a NOTIFY), checked every `poll_secs`."""

    def __init__(self, store: Store, poll_secs: float = POLL_SECS) -> None:
        self.store = store
        self.poll_secs = poll_secs
        self._reloads: dict[str, list[Reload]] = {}
        self._seen: dict[str, int] = {}
        self._woken = asyncio.Event()

    def on_change(self, name: str, reload: Reload) -> None:
        """Call `reload()` whenever counter `name` moves (register before `prime`)."""
        self._reloads.setdefault(name, []).append(reload)

    def wake(self, _item: str | None = None) -> None:
        """Look at the counters now (a listener subscriber)."""
        self._woken.set()

    async def prime(self) -> None:
        """Note the counters as they are (at start, after the caches were first loaded)."""
        async with self.store.connect() as conn:
            self._seen = await read(conn)

    async def check(self) -> None:
        """Reload every cache whose counter moved since the last look."""
        self._woken.clear()
        async with self.store.connect() as conn:
            now = await read(conn)
        for name, version in now.items():
            if self._seen.get(name) != version:
                for reload in self._reloads.get(name, ()):
                    await reload()
                self._seen[name] = version

    async def run(self) -> None:
        """Check whenever woken, and every `poll_secs` anyway, until cancelled; failures are logged and retried."""
        failing = False
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_secs):
                    await self._woken.wait()
            try:
                await self.check()
                failing = False
            except Exception:
                if not failing:
                    log.exception(
                        "reading the shared change counters failed; caches may be stale until it works"
                    )
                failing = True
