"""Following a session's changelog: one shared reader per session per process, fanned out to every watcher.

A commit in this process wakes the session's reader at once; on PostgreSQL a commit in another process wakes it
through that process's NOTIFY (`ChangeNotifier.relay`), and a slow poll finds what a lost notification missed.
However many watchers a session has, each change is read from the database once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Generic, Protocol, TypeVar

BATCH = 500
_QUEUE_BATCHES = 64  # a watcher further behind than this many batches catches up from the database itself
log = logging.getLogger("specai.graph")


class Sequenced(Protocol):
    """A change with a changelog id."""

    @property
    def id(self) -> int: ...


C = TypeVar("C", bound=Sequenced)
Reader = Callable[[str, int, int], Awaitable[list[C]]]  # (session, after id, limit) -> changes, oldest first
Latest = Callable[[str], Awaitable[int]]  # session -> its newest committed changelog id
GRAPH_CHANNEL = "specai_graph"


class Relay(Protocol):
    """How commits reach the other processes on the database, and theirs reach us (`store.listener.Listener`)."""

    def subscribe(self, channel: str, subscriber: Callable[[str | None], None]) -> None: ...

    def publish(self, channel: str, item: str) -> None: ...


class Notifier(Protocol):
    """What the change feed needs to hear of commits: this process's writes today, every process's later."""

    def event(self, session_id: str) -> asyncio.Event:
        """The event the next commit to `session_id` sets; take it *before* reading, so no commit is missed."""
        ...

    def notify(self, session_id: str) -> None:
        """A write to `session_id` committed: wake everyone waiting on it."""
        ...


class ChangeNotifier:
    """Wakes the readers of a session when a write to it commits: in this process, and through a `Relay` in the
    other processes sharing the database (the NOTIFY is sent after the commit, out of the write's transaction)."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._relay: Relay | None = None

    def relay(self, relay: Relay | None) -> None:
        """Also tell (and hear) the other processes through `relay`; None: this process only."""
        self._relay = relay
        if relay is not None:
            relay.subscribe(GRAPH_CHANNEL, self._heard)

    def event(self, session_id: str) -> asyncio.Event:
        """The event the next commit to `session_id` sets; take it *before* reading, so no commit is missed."""
        return self._events.setdefault(session_id, asyncio.Event())

    def notify(self, session_id: str) -> None:
        """Wake everyone waiting on `session_id`, here and in the other processes."""
        self._wake(session_id)
        if self._relay is not None:
            self._relay.publish(GRAPH_CHANNEL, session_id)

    def _wake(self, session_id: str) -> None:
        waiting = self._events.pop(session_id, None)
        if waiting is not None:
            waiting.set()

    def _heard(self, session_id: str | None) -> None:
        """Another process committed to `session_id` (None: it may have, to any session)."""
        if session_id is not None:
            self._wake(session_id)
            return
        events, self._events = self._events, {}
        for event in events.values():
            event.set()


class _Watcher(Generic[C]):
    """One follower's inbox of change batches; `overflowed` when it fell too far behind."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[list[C]] = asyncio.Queue(_QUEUE_BATCHES)
        self.overflowed = False

    def offer(self, batch: list[C]) -> None:
        try:
            self.inbox.put_nowait(batch)
        except asyncio.QueueFull:
            self.overflowed = True


class _SessionReader(Generic[C]):
    """Reads one session's new changes after each local commit (or poll) and hands them to every watcher."""

    def __init__(self, session_id: str, start: int) -> None:
        self.session_id = session_id
        self.cursor = start
        self.watchers: set[_Watcher[C]] = set()
        self.task: asyncio.Task[None] | None = None

    async def run(self, read: Reader[C], notifier: Notifier, poll_secs: float) -> None:
        while True:
            woken = notifier.event(self.session_id)
            try:
                batch = await read(self.session_id, self.cursor, BATCH)
            except Exception:  # the database went away: watchers wait, the reader retries
                log.exception("reading the graph changelog of session %r failed; retrying", self.session_id)
                await asyncio.sleep(poll_secs)
                continue
            if batch:
                self.cursor = batch[-1].id
                for watcher in self.watchers:
                    watcher.offer(batch)
            if len(batch) < BATCH:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_secs):
                        await woken.wait()


class ChangeFeed(Generic[C]):
    """Every change of a session after a given id, in order, exactly once, for as many watchers as there are."""

    def __init__(self, read: Reader[C], latest: Latest, notifier: Notifier) -> None:
        self._read = read
        self._latest = latest
        self.notifier = notifier
        self._readers: dict[str, _SessionReader[C]] = {}

    async def follow(self, session_id: str, after: int, poll_secs: float) -> AsyncGenerator[C, None]:
        """Yield the session's changes with an id above `after`, forever.

        The watcher joins the shared reader first and then catches up from the database, so every change is
        either in the catch-up or in a later batch; ids at or below the watcher's cursor are dropped as repeats.
        """
        watcher: _Watcher[C] = _Watcher()
        reader = await self._join(session_id, watcher, poll_secs)
        cursor = after
        try:
            while True:
                # catch up from the database (at the start, and whenever the inbox overflowed)
                watcher.overflowed = False
                while True:
                    batch = await self._read(session_id, cursor, BATCH)
                    for change in batch:
                        yield change
                        cursor = change.id
                    if len(batch) < BATCH:
                        break
                while not watcher.overflowed:
                    for change in await watcher.inbox.get():
                        if change.id > cursor:
                            yield change
                            cursor = change.id
                while not watcher.inbox.empty():  # stale: the catch-up reads past them
                    watcher.inbox.get_nowait()
        finally:
            self._leave(reader, watcher)

    async def _join(self, session_id: str, watcher: _Watcher[C], poll_secs: float) -> _SessionReader[C]:
        reader = self._readers.get(session_id)
        if reader is None:
            # the session's own newest id, not the newest of all: ids of one session commit in order, while an id
            # of another session may already be committed as this session's lower one still waits for its commit
            reader = _SessionReader(session_id, await self._latest(session_id))
            if (existing := self._readers.get(session_id)) is not None:  # another watcher won the race
                reader = existing
            else:
                self._readers[session_id] = reader
                reader.task = asyncio.create_task(reader.run(self._read, self.notifier, poll_secs))
        reader.watchers.add(watcher)
        return reader

    def _leave(self, reader: _SessionReader[C], watcher: _Watcher[C]) -> None:
        reader.watchers.discard(watcher)
        if not reader.watchers and self._readers.get(reader.session_id) is reader:
            del self._readers[reader.session_id]
            if reader.task is not None:
                reader.task.cancel()
