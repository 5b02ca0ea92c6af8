"""Following a session's changelog: one shared reader per session per process, fanned out to every watcher.

A commit in this process wakes the session's reader at once; writes from other processes sharing the database are
found by polling. However many watchers a session has, each change is read from the database once.
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


class Notifier(Protocol):
    """What the change feed needs to hear of commits: this process's writes today, every process's later."""

    def event(self, session_id: str) -> asyncio.Event:
        """The event the next commit to `session_id` sets; take it *before* reading, so no commit is missed."""
        ...

    def notify(self, session_id: str) -> None:
        """A write to `session_id` committed: wake everyone waiting on it."""
        ...


class ChangeNotifier:
    """The in-process `Notifier`: wakes the readers of a session when a write to it commits in this process."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def event(self, session_id: str) -> asyncio.Event:
        """The event the next commit to `session_id` sets; take it *before* reading, so no commit is missed."""
        return self._events.setdefault(session_id, asyncio.Event())

    def notify(self, session_id: str) -> None:
        """Wake everyone waiting on `session_id`."""
        waiting = self._events.pop(session_id, None)
        if waiting is not None:
            waiting.set()


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

    def __init__(self, read: Reader[C], latest: Callable[[], Awaitable[int]], notifier: Notifier) -> None:
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
            reader = _SessionReader(session_id, await self._latest())
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
