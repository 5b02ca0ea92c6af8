"""Login throttling and request rate limits kept in the database, so every process on it spends the same budgets.

The rules are users/throttle.py's (`BudgetRule`, `TokenBucket`); this module keeps their counters in the tables
`login_counters`, `login_known` and `rate_buckets`. Each call is one short transaction that reads and updates the
rows it needs while it holds them: on PostgreSQL missing rows are inserted (ON CONFLICT DO NOTHING), then locked
with SELECT ... FOR UPDATE, both in (budget, key) order so two processes never wait on each other in a cycle;
SQLite serialises writers already. N processes on one database so give a guesser one budget, not N, and
concurrent attempts on any of them cannot outrun it.

Times are wall-clock epoch seconds, shared by the processes: keep their clocks in sync (NTP); a skew of a few
seconds only moves a lockout's end by as much.

A process that dies leaves its reservations unsettled. A reservation therefore counts only until the end of the
PENDING_FOR window after the one it was taken in: between PENDING_FOR and twice that after it was taken. A
password check takes well under a second and waits in the gate's bounded queue for a few seconds at most, so a
live reservation is always settled long before; a settle that comes later changes nothing. This is the one
difference from MemoryLoginThrottle, where a reservation lives as long as the process that holds it.

`prune()` deletes what is the same as nothing (counters quiet for MAX_LOCKOUT, unlocked, nothing in flight; pairs
that last logged in more than KNOWN_FOR ago; full rate buckets); the hourly retention job calls it. Rows it finds
locked are left for the next run, so pruning never waits for, or deadlocks with, a login.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import and_, bindparam, delete, or_, select, tuple_, update
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.config import AuthSettings
from specai.store import Store
from specai.store.engine import insert_ignore, upsert
from specai.store.schema import login_counters, login_known, rate_buckets
from specai.users.throttle import (
    ADDRESS,
    KNOWN_FOR,
    MAX_LOCKOUT,
    PAIR,
    USER,
    Attempt,
    BudgetRule,
    Clock,
    Counter,
    LoginThrottle,
    MemoryLoginThrottle,
    MemoryRateLimiter,
    RateLimiter,
    TokenBucket,
    budget_keys,
    clip,
    lane_of,
    pair_key,
    refusal,
    stale,
)

PENDING_FOR = 60.0  # a reservation counts this long at least, twice this long at most (see the docstring)
# A counter quiet for MAX_LOCKOUT so has nothing in flight: prune() relies on it.
assert 2 * PENDING_FOR <= MAX_LOCKOUT
_TRIES = 3
T = TypeVar("T")
log = logging.getLogger("specai.users")

StoreSource = Store | Callable[[], Store | None]  # the store, or a callable giving it once it is open


def throttles(auth: AuthSettings, store: StoreSource | None) -> tuple[LoginThrottle, RateLimiter]:
    """The login throttle and the POST /auth/hash limit `[auth]` asks for: in this process when `store` is None,
    else in that database (on PostgreSQL shared by every process that uses it)."""
    pair, address, user, lockout = (
        auth.max_failed_logins,
        auth.max_failed_logins_per_address,
        auth.max_failed_logins_per_user,
        float(auth.lockout_secs),
    )
    if store is None:
        memory = MemoryLoginThrottle(pair_limit=pair, address_limit=address, user_limit=user, lockout=lockout)
        return memory, MemoryRateLimiter(auth.hash_per_minute)
    stored = StoredLoginThrottle(
        store, pair_limit=pair, address_limit=address, user_limit=user, lockout=lockout
    )
    return stored, StoredRateLimiter(store, auth.hash_per_minute)


class _Vanished(Exception):
    """A row to lock was pruned between its insert and its lock: run the transaction again."""


class _Transactions:
    """Short retried transactions on the store, and settles that a cancelled request cannot cut short."""

    def __init__(self, store: StoreSource, clock: Clock) -> None:
        self._source = store
        self.clock = clock
        self._settling: set[asyncio.Task[Any]] = set()

    @property
    def store(self) -> Store:
        """The open store."""
        store = self._source if isinstance(self._source, Store) else self._source()
        if store is None:
            raise RuntimeError("the store is not open yet")
        return store

    async def _run(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """`work` in one transaction, run again (at most _TRIES times in all) when pruning raced it."""
        for _ in range(_TRIES - 1):
            try:
                async with self.store.transaction() as conn:
                    return await work(conn)
            except _Vanished:
                continue
        async with self.store.transaction() as conn:
            return await work(conn)

    async def _shielded(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` to its end even when the caller is cancelled (a hang-up must not escape the count)."""
        task = asyncio.ensure_future(work)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_report)  # nobody awaits it any more: say if it fails
            raise


def _report(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("a login counter update of a cancelled request failed: %s", exc)


# -- login throttling -------------------------------------------------------------------------------------------


def _window(t: float) -> int:
    return math.floor(t / PENDING_FOR)


@dataclass
class _Row:
    """One counter row: as the rules see it (`counter.pending` = the reservations that still count) and as it is
    stored (`fresh` reservations taken in `window`, `older` ones in the window before)."""

    budget: str
    key: str
    counter: Counter
    fresh: int
    older: int
    window: int

    @classmethod
    def load(cls, row: RowMapping, now: float) -> _Row:
        window = max(_window(now), row["pending_window"])  # never backwards, even if another clock is ahead
        shift = window - row["pending_window"]
        fresh = row["pending"] if shift == 0 else 0
        older = row["pending_before"] if shift == 0 else row["pending"] if shift == 1 else 0
        counter = Counter(row["failures"], fresh + older, row["locked_until"], row["last"])
        if stale(counter, now):
            return cls(row["budget"], row["key"], Counter(), 0, 0, window)
        return cls(row["budget"], row["key"], counter, fresh, older, window)

    def follow(self, taken_at: float) -> None:
        """Apply the rules' change of `counter.pending` to the windows: a new reservation goes in this window; a
        settled one leaves the window it was taken in, or nothing when it no longer counts."""
        change = self.counter.pending - (self.fresh + self.older)
        if change > 0:
            self.fresh += change
            return
        taken = min(_window(taken_at), self.window)
        for _ in range(-change):
            if taken < self.window - 1:
                return  # it expired: it is no longer in either window
            if taken == self.window and self.fresh > 0:
                self.fresh -= 1
            elif self.older > 0:
                self.older -= 1
            elif self.fresh > 0:
                self.fresh -= 1

    def values(self) -> dict[str, Any]:
        return {
            "b_budget": self.budget,
            "b_key": self.key,
            "b_failures": self.counter.failures,
            "b_pending": self.fresh,
            "b_pending_before": self.older,
            "b_pending_window": self.window,
            "b_locked_until": self.counter.locked_until,
            "b_last": self.counter.last,
        }


_counters = login_counters.c
_known = login_known.c
_WRITE_COUNTER = (
    update(login_counters)
    .where(_counters.budget == bindparam("b_budget"), _counters.key == bindparam("b_key"))
    .values(
        failures=bindparam("b_failures"),
        pending=bindparam("b_pending"),
        pending_before=bindparam("b_pending_before"),
        pending_window=bindparam("b_pending_window"),
        locked_until=bindparam("b_locked_until"),
        last=bindparam("b_last"),
    )
)


async def _lock(conn: AsyncConnection, keys: Iterable[tuple[str, str]], now: float) -> dict[str, _Row]:
    """The rows of `keys` (budget, key), created when missing and locked until the transaction ends; by budget."""
    ordered = sorted(set(keys))
    fresh = {"failures": 0, "pending": 0, "pending_before": 0, "locked_until": 0.0, "last": now}
    window = _window(now)
    rows = [{"budget": b, "key": k, "pending_window": window, **fresh} for b, k in ordered]
    await conn.execute(insert_ignore(conn, login_counters, "budget", "key").values(rows))
    wanted = or_(*(and_(_counters.budget == b, _counters.key == k) for b, k in ordered))
    query = select(login_counters).where(wanted).order_by(_counters.budget, _counters.key).with_for_update()
    found = (await conn.execute(query)).mappings().all()
    if len(found) < len(ordered):
        raise _Vanished
    return {row["budget"]: _Row.load(row, now) for row in found}


async def _write(conn: AsyncConnection, rows: Iterable[_Row]) -> None:
    await conn.execute(_WRITE_COUNTER, [row.values() for row in rows])


class StoredLoginThrottle(_Transactions):
    """The LoginThrottle in the database: the same budgets, lanes and known pairs as MemoryLoginThrottle, shared
    by every process on the database (see the module docstring for what differs: reservations expire)."""

    def __init__(
        self,
        store: StoreSource,
        *,
        pair_limit: int = 5,
        address_limit: int = 10,
        user_limit: int = 20,
        lockout: float = 30.0,
        clock: Clock = time.time,
    ) -> None:
        super().__init__(store, clock)
        self.rules = {
            PAIR: BudgetRule(pair_limit, lockout),
            ADDRESS: BudgetRule(address_limit, lockout),
            USER: BudgetRule(user_limit, lockout),
        }

    async def reserve(self, username: str, address: str) -> Attempt:
        """Refuse when any budget is spent (429 + Retry-After), else reserve in each: one transaction."""
        now = self.clock()
        username = clip(username)

        async def work(conn: AsyncConnection) -> Attempt:
            seen = await conn.scalar(
                select(_known.last_success).where(_known.username == username, _known.address == address)
            )
            known = seen is not None and now - seen < KNOWN_FOR
            wanted = [(PAIR, pair_key(username, address))]
            if not known:
                wanted += [(ADDRESS, address), (USER, username)]
            rows = await _lock(conn, wanted, now)
            address_active = not known and self.rules[ADDRESS].active(rows[ADDRESS].counter)
            attempt = Attempt(username, address, lane_of(known, address_active), now)
            waits = [self.rules[name].wait(row.counter, now) for name, row in rows.items()]
            if error := refusal([w for w in waits if w is not None]):
                raise error  # rolls back: the rows inserted for this attempt go too
            for name, row in rows.items():
                self.rules[name].take(row.counter, now)
                row.follow(now)
            await _write(conn, rows.values())
            return attempt

        return await self._run(work)

    async def failed(self, attempt: Attempt) -> None:
        """Count the failure in every budget the attempt reserved."""
        await self._shielded(self._settle(attempt, failed=True))

    async def succeeded(self, attempt: Attempt) -> None:
        """Clear the pair and remember it as known; the address and username budgets only drop the reservation."""
        await self._shielded(self._settle(attempt, failed=False, forget=True))

    async def release(self, attempt: Attempt) -> None:
        """Drop every reservation of the attempt."""
        await self._shielded(self._settle(attempt, failed=False))

    async def prune(self) -> int:
        """Delete counters that are the same as none and known pairs older than KNOWN_FOR; rows that are locked
        right now are left for the next run. Returns how many rows went."""
        now = self.clock()
        quiet = (
            select(_counters.budget, _counters.key)
            .where(_counters.last < now - MAX_LOCKOUT, _counters.locked_until <= now)
            .with_for_update(skip_locked=True)
        )
        old = (
            select(_known.username, _known.address)
            .where(_known.last_success < now - KNOWN_FOR)
            .with_for_update(skip_locked=True)
        )
        async with self.store.transaction() as conn:
            counters = await conn.execute(
                delete(login_counters).where(tuple_(_counters.budget, _counters.key).in_(quiet))
            )
            pairs = await conn.execute(
                delete(login_known).where(tuple_(_known.username, _known.address).in_(old))
            )
        return int(counters.rowcount or 0) + int(pairs.rowcount or 0)

    async def _settle(self, attempt: Attempt, *, failed: bool, forget: bool = False) -> None:
        now = self.clock()

        async def work(conn: AsyncConnection) -> None:
            rows = await _lock(conn, budget_keys(attempt), now)
            for name, row in rows.items():
                rule = self.rules[name]
                if failed:
                    rule.fail(row.counter, now)
                else:
                    rule.release(row.counter, forget=forget and name == PAIR)
                row.follow(attempt.taken_at)
            await _write(conn, rows.values())
            if forget:
                await conn.execute(
                    upsert(conn, login_known, ["username", "address"], ["last_success"]).values(
                        username=attempt.username, address=attempt.address, last_success=now
                    )
                )

        await self._run(work)


# -- request rate limits ----------------------------------------------------------------------------------------

_buckets = rate_buckets.c


class StoredRateLimiter(_Transactions):
    """MemoryRateLimiter's token bucket per key, in the database: `per_minute` requests a minute over every
    process, bursts up to that. `name` keeps the keys of different limits apart in the one table."""

    def __init__(
        self, store: StoreSource, per_minute: int, *, name: str = "hash", clock: Clock = time.time
    ) -> None:
        super().__init__(store, clock)
        self.bucket = TokenBucket.per_minute(per_minute)
        self.name = name

    async def hit(self, key: str) -> None:
        """Spend one token or raise ThrottledError with the seconds until one is back: one transaction."""
        now = self.clock()
        row_key = f"{self.name}:{key}"

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(
                insert_ignore(conn, rate_buckets, "key").values(
                    key=row_key, tokens=self.bucket.capacity, at=now
                )
            )
            query = select(_buckets.tokens, _buckets.at).where(_buckets.key == row_key).with_for_update()
            saved = (await conn.execute(query)).first()
            if saved is None:
                raise _Vanished
            tokens = self.bucket.tokens((saved.tokens, saved.at), now)
            if error := self.bucket.refusal(tokens):
                raise error
            await conn.execute(
                update(rate_buckets).where(_buckets.key == row_key).values(tokens=tokens - 1, at=now)
            )

        await self._run(work)

    async def prune(self) -> int:
        """Delete this limit's buckets that are full again (the same as none); returns how many went."""
        now = self.clock()
        full = (
            select(_buckets.key)
            .where(_buckets.key.startswith(f"{self.name}:", autoescape=True))
            .where(_buckets.at < now - self.bucket.refill_secs)
            .with_for_update(skip_locked=True)
        )
        async with self.store.transaction() as conn:
            result = await conn.execute(delete(rate_buckets).where(_buckets.key.in_(full)))
        return int(result.rowcount or 0)
