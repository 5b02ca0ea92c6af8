"""One dedicated PostgreSQL connection per process: LISTEN for the other processes' wake-ups, NOTIFY out of hot paths.

A NOTIFY is only ever a wake-up: what changed is always read back from the tables (changelog ids, change counters),
so a lost notification costs latency, never data, and each reader keeps a slow poll as its fallback. Payloads are
a JSON list of short strings, coalesced per channel, far below PostgreSQL's 8000-byte cap; notifications this
process sent itself are not handed back to it. The connection is unpooled (a pooler in transaction mode would
drop its LISTEN), checked every `check_secs`, and re-made with backoff when it fails; subscribers then hear `None`,
meaning "anything may have been missed: look again".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import URL

log = logging.getLogger("specai.store")
MAX_PAYLOAD_BYTES = 7000  # PostgreSQL refuses payloads of 8000 bytes or more
MAX_PENDING = (
    10_000  # distinct payloads waiting per channel while disconnected; more are dropped (polls cover)
)
APPLICATION_NAME = "specai listener"
Subscriber = Callable[[str | None], None]  # a payload item, or None after a (re)connect


def encode(items: list[str]) -> str:
    """The payload of one NOTIFY: a JSON list of strings."""
    return json.dumps(items, separators=(",", ":"))


def decode(payload: str) -> list[str]:
    """The items of a payload; anything malformed is one wake-up for everything (None is not an item)."""
    try:
        items = json.loads(payload)
    except ValueError:
        return []
    return [item for item in items if isinstance(item, str)] if isinstance(items, list) else []


def asyncpg_dsn(url: URL) -> str:
    """The libpq-style DSN asyncpg connects with, from the store's SQLAlchemy URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    """LISTEN on every subscribed channel over one connection of its own; `publish` queues a NOTIFY for it to send."""

    def __init__(
        self,
        url: URL,
        *,
        check_secs: float = 5.0,
        retry_max_secs: float = 5.0,
        connect_timeout_secs: float = 10.0,
    ) -> None:
        self.url = url
        self.check_secs = check_secs
        self.retry_max_secs = retry_max_secs
        self.connect_timeout_secs = connect_timeout_secs
        self._subscribers: dict[str, list[Subscriber]] = {}
        self._outbox: dict[str, dict[str, None]] = {}  # channel -> payload items, in order, without repeats
        self._wake = asyncio.Event()
        self._conn: Any = None
        self._pid: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.sent = 0  # NOTIFY statements sent (for tests and benchmarks)

    @property
    def connected(self) -> bool:
        """True while the LISTEN connection is up."""
        return self._conn is not None and not self._conn.is_closed()

    def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Call `subscriber(item)` for each item other processes publish on `channel` (subscribe before `start`)."""
        self._subscribers.setdefault(channel, []).append(subscriber)

    def publish(self, channel: str, item: str) -> None:
        """Queue `item` for `channel`: sent within moments, coalesced with others; never blocks, never raises."""
        pending = self._outbox.setdefault(channel, {})
        if len(pending) < MAX_PENDING:
            pending[item] = None
        self._wake.set()

    async def start(self, wait_secs: float = 5.0) -> None:
        """Run in the background; wait up to `wait_secs` for the first connection (it keeps trying after)."""
        self._task = asyncio.create_task(self._run(), name="specai-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), wait_secs)

    async def close(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop()

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._connect()
                delay = 0.1
                self._hear_all(None)  # whatever happened while we were not listening
                await self._serve()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away or refused us: re-connect with backoff
                if self._conn is not None or delay == 0.1:
                    log.warning("the PostgreSQL listener connection failed (%s); reconnecting", _reason(exc))
                await self._drop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max_secs)

    async def _connect(self) -> None:
        conn = await asyncpg.connect(
            asyncpg_dsn(self.url),
            timeout=self.connect_timeout_secs,
            server_settings={"application_name": APPLICATION_NAME},
        )
        try:
            for channel in self._subscribers:
                await conn.add_listener(channel, self._heard)
        except BaseException:
            await conn.close()
            raise
        self._conn, self._pid = conn, conn.get_server_pid()
        self._ready.set()

    async def _serve(self) -> None:
        """Send what was published, and check the connection every `check_secs`, until it fails."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_secs):
                    await self._wake.wait()
            self._wake.clear()
            if self._outbox:
                await self._flush()
            else:
                await self._conn.execute("SELECT 1")

    async def _flush(self) -> None:
        while self._outbox:
            channel, items = next(iter(self._outbox.items()))
            batch: list[str] = []
            size = 2
            for item in items:
                cost = len(encode([item]).encode()) - 1
                if batch and size + cost > MAX_PAYLOAD_BYTES:
                    break
                batch.append(item)
                size += cost
            await self._conn.execute("SELECT pg_notify($1, $2)", channel, encode(batch))
            self.sent += 1
            for item in batch:  # only once sent: a failure above leaves them queued for the next connection
                del items[item]
            if not items:
                del self._outbox[channel]

    def _heard(self, _conn: Any, pid: int, channel: str, payload: str) -> None:
        if pid == self._pid:
            return
        items: list[str | None] = [*decode(payload)] or [None]
        for subscriber in self._subscribers.get(channel, ()):
            for item in items:
                _call(subscriber, item)

    def _hear_all(self, item: str | None) -> None:
        for subscribers in self._subscribers.values():
            for subscriber in subscribers:
                _call(subscriber, item)

    async def _drop(self) -> None:
        conn, self._conn, self._pid = self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)


def _call(subscriber: Subscriber, item: str | None) -> None:
    try:
        subscriber(item)
    except Exception:
        log.exception("a listener subscriber failed")


def _reason(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__
