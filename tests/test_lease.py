"""The singleton-jobs lease on real PostgreSQL (two holders, each with its own store and lease connection) and on
SQLite (always held): one holder at a time, renewal, expiry and release with higher epochs, the fence, and the
supervisor that runs jobs only while it holds the lease and steps down on any database error."""

from __future__ import annotations

import asyncio
import functools
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from databases import pg_admin
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from specai.config import Settings
from specai.server.leader import Leadership
from specai.store import Store
from specai.store.lease import (
    LEASE_CHANNEL,
    Lease,
    LostLeadershipError,
    Term,
    holder_id,
    open_lease_store,
)
from specai.store.listener import Listener
from specai.store.schema import shared_versions

pytestmark = pytest.mark.anyio


async def eventually(check: Callable[[], Awaitable[Any]], within: float = 10, what: str = "it") -> Any:
    """Poll `check` (without blocking the event loop) until it returns something truthy; fail after `within` s."""
    deadline = time.monotonic() + within
    while True:
        if found := await check():
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.01)


# --- PostgreSQL: stores, lease connections, and a way to break one -------------------------------------------------


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[Store]:
    """The module's PostgreSQL database, migrated (each test uses lease names of its own)."""
    store = await Store.open_url(make_url(pg_url).set(drivername="postgresql+asyncpg"))
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def name() -> str:
    return f"jobs-{secrets.token_hex(4)}"


@pytest.fixture
async def lease_stores(pg: Store) -> AsyncIterator[Callable[[], Awaitable[Store]]]:
    """Opens lease connections (as the server does: one connection each), closed after the test."""
    opened: list[Store] = []

    async def open_one() -> Store:
        store = await open_lease_store(pg.engine.url, 2.0)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


async def backend_pid(store: Store) -> int:
    """The PostgreSQL backend of a lease store's one connection."""
    async with store.connect() as conn:
        return int(await conn.scalar(text("SELECT pg_backend_pid()")))


async def terminate(pg_url: str, pid: int) -> None:
    await pg_admin(pg_url, f"SELECT pg_terminate_backend({pid})")


async def write_marker(store: Store, marker: str, term: Term, *, fence_first: bool = True) -> None:
    """One row in a transaction fenced by `term` (before or after the write)."""
    async with store.transaction() as conn:
        if fence_first:
            await term.fence(conn)
        await conn.execute(shared_versions.insert().values(name=marker, version=1))
        if not fence_first:
            await term.fence(conn)


async def has_marker(store: Store, marker: str) -> bool:
    async with store.connect() as conn:
        found = await conn.scalar(select(shared_versions.c.name).where(shared_versions.c.name == marker))
    return found is not None


# --- the lease ------------------------------------------------------------------------------------------------------


async def test_one_holder_at_a_time_and_a_renewal_keeps_the_epoch(pg: Store, name: str) -> None:
    a, b = Lease(pg, name, "a", 30), Lease(pg, name, "b", 30)
    assert await a.state() is None  # nobody claimed it yet
    held = await a.claim()
    assert held is not None
    assert await b.claim() is None
    renewed = await a.claim(held)
    assert renewed is not None
    assert renewed.epoch == held.epoch
    state = await b.state()
    assert state is not None
    assert (state.holder, state.epoch) == ("a", held.epoch)
    assert 25 < state.expires_in <= 30  # by the database's clock
    assert await b.claim() is None


async def test_expiry_lets_the_other_take_it_with_a_higher_epoch(pg: Store, name: str) -> None:
    a, b = Lease(pg, name, "a", 0.3), Lease(pg, name, "b", 30)
    first = await a.claim()
    assert first is not None
    second = await eventually(b.claim, what="b to claim the expired lease")
    assert second.epoch > first.epoch
    assert await a.claim(first) is None  # the late renewal of the deposed holder is refused
    state = await a.state()
    assert state is not None
    assert state.holder == "b"


async def test_a_new_tenure_of_the_same_holder_gets_a_higher_epoch(pg: Store, name: str) -> None:
    a = Lease(pg, name, "a", 0.3)
    first = await a.claim()
    assert first is not None
    again = await a.claim()  # not renewing: a process that stepped down claims a new tenure
    assert again is not None
    assert again.epoch == first.epoch + 1
    await eventually(lambda: _expired(a), what="the lease to expire")
    late = await a.claim(again)  # renewing after expiry: a new tenure, not the old one
    assert late is not None
    assert late.epoch == again.epoch + 1


async def _expired(lease: Lease) -> bool:
    state = await lease.state()
    return state is not None and state.expires_in <= 0


async def test_the_fence_rolls_back_a_deposed_holders_write(pg: Store, name: str) -> None:
    a, b = Lease(pg, name, "a", 0.3), Lease(pg, name, "b", 30)
    first = await a.claim()
    assert first is not None
    await write_marker(pg, f"{name}-current", first)  # the holder's own write lands
    assert await has_marker(pg, f"{name}-current")
    taken = await eventually(b.claim, what="b to take over")
    for fence_first in (True, False):
        marker = f"{name}-late-{fence_first}"
        with pytest.raises(LostLeadershipError) as refused:
            await write_marker(pg, marker, first, fence_first=fence_first)
        assert refused.value.code == "not_leader"
        assert f"epoch {first.epoch}" in refused.value.message
        assert not await has_marker(pg, marker)  # rolled back
    await write_marker(pg, f"{name}-new", taken)
    assert await has_marker(pg, f"{name}-new")


async def test_a_fenced_transaction_holds_off_a_takeover_until_it_ends(
    pg: Store, name: str, lease_stores: Callable[[], Awaitable[Store]]
) -> None:
    a, b = Lease(pg, name, "a", 0.5), Lease(await lease_stores(), name, "b", 30)
    first = await a.claim()
    assert first is not None
    b_pid = await backend_pid(b.store)
    marker = f"{name}-in-flight"
    async with pg.transaction() as conn:
        await first.fence(conn)  # the lease was still held: the row is share-locked until this commits
        await conn.execute(shared_versions.insert().values(name=marker, version=1))
        await eventually(lambda: _expired(a), what="the lease to expire")
        takeover = asyncio.ensure_future(b.claim())
        await eventually(lambda: _waiting_on_a_lock(pg, b_pid), what="b's claim to wait for the share lock")
        assert not takeover.done()
    taken = await takeover  # once the write committed
    assert taken is not None
    assert taken.epoch > first.epoch
    assert await has_marker(pg, marker)  # it landed before the next tenure began


async def _waiting_on_a_lock(store: Store, pid: int) -> bool:
    async with store.connect() as conn:
        event = await conn.scalar(
            text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
        )
    return event == "Lock"


async def test_release_hands_over_at_once_and_wakes_the_others(pg: Store, name: str) -> None:
    heard: list[str | None] = []
    listener = Listener(pg.engine.url)
    listener.subscribe(LEASE_CHANNEL, heard.append)
    await listener.start()
    try:
        a, b = Lease(pg, name, "a", 3600), Lease(pg, name, "b", 3600)
        first = await a.claim()
        assert first is not None
        assert await b.claim() is None
        assert await a.release(first) is True
        taken = await b.claim()  # at once: no waiting for the hour to pass
        assert taken is not None
        assert taken.epoch > first.epoch
        assert await a.release(first) is False  # that tenure had already ended
        await eventually(lambda: _async(name in heard), what="the release's NOTIFY")
    finally:
        await listener.close()


async def _async(value: Any) -> Any:
    return value


async def _more_than(runs: Runs, tenures: int) -> bool:
    return len(runs.entries) > tenures


def test_holder_ids_differ_per_process_and_name_the_instance() -> None:
    first, second = holder_id("inst-1"), holder_id("inst-1")
    assert first != second
    assert first.startswith("inst-1/")


# --- the supervisor ---------------------------------------------------------------------------------------------------


@dataclass
class Runs:
    """When each supervisor's job ran: [who, epoch, start, end, how it ended]."""

    entries: list[list[Any]] = field(default_factory=list)

    def job(self, who: str, *, fence_store: Store | None = None) -> Callable[[Term], Awaitable[None]]:
        async def run(term: Term) -> None:
            entry: list[Any] = [who, term.epoch, time.monotonic(), None, "running"]
            self.entries.append(entry)
            try:
                while True:
                    if fence_store is not None:
                        async with fence_store.transaction() as conn:
                            await term.fence(conn)
                    await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                entry[4] = "cancelled"
                raise
            except LostLeadershipError:
                entry[4] = "fenced"
                raise
            finally:
                entry[3] = time.monotonic()

        return run

    def by(self, who: str) -> list[list[Any]]:
        return [entry for entry in self.entries if entry[0] == who]

    def assert_never_two_at_once(self) -> None:
        now = time.monotonic()
        spans = sorted(
            (start, end if end is not None else now, who) for who, _, start, end, _ in self.entries
        )
        for (_, end, who), (start, _, next_who) in itertools.pairwise(spans):
            assert start >= end, f"{next_who} started a job before {who}'s ended"


@dataclass
class Supervisor:
    leadership: Leadership
    stopping: asyncio.Event
    task: asyncio.Task[None]

    async def stop(self) -> None:
        self.stopping.set()
        await self.task


@pytest.fixture
async def supervise(
    pg: Store, lease_stores: Callable[[], Awaitable[Store]]
) -> AsyncIterator[Callable[..., Awaitable[Supervisor]]]:
    """Starts supervisors of one lease (each with its own lease connection); all stopped after the test."""
    started: list[Supervisor] = []

    listeners: list[Listener] = []

    async def start(
        name: str, runs: Runs, who: str, ttl: float = 1.0, fence: bool = False, listen: bool = False
    ) -> Supervisor:
        leadership = Leadership(Lease(await lease_stores(), name, who, ttl))
        leadership.add("job", runs.job(who, fence_store=pg if fence else None))
        if listen:  # as the server does: a release elsewhere wakes it
            listener = Listener(pg.engine.url)
            listener.subscribe(LEASE_CHANNEL, leadership.wake)
            await listener.start()
            listeners.append(listener)
        stopping = asyncio.Event()
        supervisor = Supervisor(leadership, stopping, asyncio.create_task(leadership.run(stopping)))
        started.append(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        supervisor.stopping.set()
    await asyncio.gather(*(s.task for s in started), return_exceptions=True)
    for listener in listeners:
        await listener.close()


async def _leader(*supervisors: Supervisor) -> Supervisor | None:
    leading = [s for s in supervisors if s.leadership.leading]
    assert len(leading) <= 1
    return leading[0] if leading else None


async def test_only_one_supervisor_runs_the_job_and_a_clean_stop_hands_over(
    supervise: Callable[..., Awaitable[Supervisor]], name: str
) -> None:
    runs = Runs()
    # an hour-long lease claimed every 20 minutes: only the release's wake-up can hand it over within the test
    a, b = [await supervise(name, runs, who, ttl=3600, listen=True) for who in ("a", "b")]
    first: Supervisor = await eventually(lambda: _leader(a, b), what="a leader")
    other = b if first is a else a
    await asyncio.sleep(0.5)
    assert await _leader(a, b) is first
    who = "a" if first is a else "b"
    assert [entry[0] for entry in runs.entries] == [who]  # the job ran once, on the leader only
    assert first.leadership.term is not None
    epoch = first.leadership.term.epoch
    await first.stop()  # releases: the other needs no expiry to take over
    assert runs.by(who)[0][4] == "cancelled"
    second = await eventually(lambda: _leader(a, b), what="the other to lead")
    assert second is other
    assert second.leadership.term is not None
    assert second.leadership.term.epoch > epoch
    assert [entry[0] for entry in runs.entries] == [who, "b" if who == "a" else "a"]
    runs.assert_never_two_at_once()


async def test_a_database_error_makes_the_leader_step_down_and_cancels_its_job(
    supervise: Callable[..., Awaitable[Supervisor]], name: str, pg_url: str
) -> None:
    runs = Runs()
    a = await supervise(name, runs, "a")
    await eventually(lambda: _async(a.leadership.leading), what="a to lead")
    assert a.leadership.term is not None
    epoch = a.leadership.term.epoch
    await terminate(pg_url, await backend_pid(a.leadership.lease.store))  # its lease connection dies
    await eventually(lambda: _async(runs.entries[0][4] == "cancelled"), what="the job to be cancelled")
    assert runs.entries[0][3] is not None
    # it claims again over a new connection, as a new tenure with a higher epoch
    await eventually(lambda: _async(len(runs.entries) == 2), what="the job to start again")
    assert a.leadership.term is not None
    assert a.leadership.term.epoch > epoch
    assert runs.entries[1][1] == a.leadership.term.epoch
    runs.assert_never_two_at_once()


async def test_a_database_that_stops_answering_makes_the_leader_step_down_before_its_lease_ends(
    supervise: Callable[..., Awaitable[Supervisor]], name: str, pg: Store
) -> None:
    runs = Runs()
    a = await supervise(name, runs, "a", ttl=1.5)
    await eventually(lambda: _async(a.leadership.leading), what="a to lead")
    assert a.leadership.term is not None
    epoch = a.leadership.term.epoch
    async with pg.transaction() as conn:  # the row locked: a's renewal hangs until its ttl/3 bound cancels it
        await conn.execute(text("SELECT 1 FROM leases WHERE name = :name FOR UPDATE"), {"name": name})
        await eventually(lambda: _async(not a.leadership.leading), what="a to step down")
        assert runs.entries[0][4] == "cancelled"
        state = await Lease(pg, name, "observer", 1).state()
        assert state is not None
        assert state.holder == "a"
        assert state.expires_in > 0  # it stepped down while its lease still ran: nobody else could lead yet
    # the database answers again: the same connection pool recovers, and a new tenure begins
    await eventually(lambda: _async(len(runs.entries) == 2), what="a to lead again")
    assert a.leadership.term is not None
    assert a.leadership.term.epoch > epoch
    runs.assert_never_two_at_once()


async def test_a_job_whose_fence_refuses_makes_the_supervisor_step_down(
    supervise: Callable[..., Awaitable[Supervisor]], name: str, pg: Store
) -> None:
    runs = Runs()
    a = await supervise(name, runs, "a", ttl=30, fence=True)
    await eventually(lambda: _async(a.leadership.leading), what="a to lead")
    async with pg.transaction() as conn:  # another holder takes the lease without waiting
        await conn.execute(
            text(
                "UPDATE leases SET holder = 'thief', epoch = epoch + 1, expires_at = now() + interval '1 hour' "
                "WHERE name = :name"
            ),
            {"name": name},
        )
    await eventually(lambda: _async(not a.leadership.leading), what="a to step down")
    assert runs.entries[0][4] == "fenced"
    await asyncio.sleep(0.5)  # its claims go on, refused: the thief holds the lease for an hour
    assert not a.leadership.leading
    assert len(runs.entries) == 1


async def test_jobs_never_run_in_two_supervisors_at_once(
    supervise: Callable[..., Awaitable[Supervisor]], name: str, pg_url: str
) -> None:
    runs = Runs()
    supervisors = [await supervise(name, runs, who, ttl=0.6) for who in ("a", "b", "c")]
    deadline = time.monotonic() + 6
    breaks = 0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        leader = await eventually(functools.partial(_leader, *supervisors), what="a leader")
        tenures = len(runs.entries)
        if breaks % 2 == 0:  # its connection dies: it steps down; whoever claims first leads next
            await terminate(pg_url, await backend_pid(leader.leadership.lease.store))
        else:  # it stops (releasing) and another supervisor replaces it
            await leader.stop()
            who = f"r{breaks}"
            supervisors = [s for s in supervisors if s is not leader]
            supervisors.append(await supervise(name, runs, who, ttl=0.6))
        breaks += 1
        # a new tenure, and a new run of the job, after each break
        await eventually(functools.partial(_more_than, runs, tenures), what="a new tenure after the break")
    assert breaks >= 6
    runs.assert_never_two_at_once()
    epochs = [entry[1] for entry in runs.entries]
    assert epochs == sorted(epochs)
    assert len(set(epochs)) == len(epochs)


# --- SQLite: always held -----------------------------------------------------------------------------------------------


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[Store]:
    store = await Store.open(Settings(home=tmp_path / "home"))
    try:
        yield store
    finally:
        await store.close()


async def test_on_sqlite_the_lease_is_always_held_through_the_same_interface(
    sqlite: Store, name: str
) -> None:
    a, b = Lease(sqlite, name, "a", 1), Lease(sqlite, name, "b", 1)
    assert not a.shared
    held = await a.claim()
    assert held is not None
    assert await b.claim() is not None
    state = await a.state()
    assert state is not None
    assert state.holder == "a"
    assert state.expires_in == float("inf")
    await write_marker(sqlite, "sqlite-marker", held)  # the fence lets every write through
    assert await has_marker(sqlite, "sqlite-marker")
    assert await a.release(held) is True


async def test_on_sqlite_the_supervisor_leads_at_once_and_stops_its_jobs(sqlite: Store, name: str) -> None:
    runs = Runs()
    leadership = Leadership(Lease(sqlite, name, "a", 1))
    leadership.add("job", runs.job("a"))
    assert await leadership.attempt() <= leadership.every
    assert leadership.leading
    await eventually(lambda: _async(runs.entries), what="the job to start")
    stopping = asyncio.Event()
    task = asyncio.create_task(leadership.run(stopping))
    await asyncio.sleep(0.5)  # renewals keep the one tenure
    assert leadership.leading
    assert leadership.terms == 1
    assert len(runs.entries) == 1
    stopping.set()
    await task
    assert not leadership.leading
    assert runs.entries[0][4] == "cancelled"
    late = Runs()
    leadership.add("late", late.job("late"))  # not leading: it waits for the next tenure
    assert late.entries == []
