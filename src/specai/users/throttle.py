"""Login throttling that an attacker elsewhere cannot turn against a user and that concurrency cannot outrun.

Three budgets, each counting failures *and* attempts still being verified (a reservation is taken before the
password check starts, so N concurrent attempts get at most `limit` checks):
- per (username, address) pair: `max_failed_logins`;
- per address (an IPv6 address counts as its /64): `max_failed_logins_per_address`;
- per username: `max_failed_logins_per_user` (stops many addresses guessing one user).
A pair that logged in within KNOWN_FOR is held to its own budget only: a guesser sharing the user's address (a
NAT) or guessing her name from elsewhere cannot lock her out of where she logs in; a new address of hers waits.
A `VerifyGate` bounds the password checks running and waiting, serving known pairs first and suspects last.
The counting rules (`BudgetRule`, `TokenBucket`) are functions of a `Counter`; the in-process throttle below and the
database one in users/stored_throttle.py (several processes, one budget) both apply them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ipaddress
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from specai.errors import ThrottledError

Clock = Callable[[], float]
T = TypeVar("T")
MAX_LOCKOUT = 15 * 60  # the longest lockout, and how long a quiet, unlocked counter is remembered
KNOWN_FOR = 30 * 86400  # a pair that logged in is held to its own budget only, this long
REFUSAL_DELAY = 1.0  # seconds before a 429 from /auth/token is sent
_MAX_KEYS = 100_000
_USERNAME_CHARS = 64


def client_key(host: str | None) -> str:
    """The address a client is throttled by: IPv4 as is, IPv6 by its /64 (one host owns a whole /64)."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return (host or "unknown")[:_USERNAME_CHARS]
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        return str(mapped) if mapped else str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Lane(enum.IntEnum):
    """Who goes first for a password-check slot (lower first)."""

    KNOWN = 0  # the pair logged in within KNOWN_FOR
    CLEAN = 1  # an unknown pair from an address without failures or other attempts in flight
    SUSPECT = 2  # an unknown pair from an address with some (and every /auth/hash)


@dataclass(frozen=True)
class Attempt:
    """A reserved login attempt: settle it with exactly one of failed, succeeded or release."""

    username: str
    address: str
    lane: Lane
    taken_at: float = field(default=0.0, compare=False)  # the throttle's clock when the reservation was taken

    @property
    def known(self) -> bool:
        """The pair logged in recently: only its own budget was reserved."""
        return self.lane is Lane.KNOWN


class LoginThrottle(Protocol):
    """What `/auth/token` needs from a throttle: in this process (below) or shared through the database."""

    async def reserve(self, username: str, address: str) -> Attempt:
        """Take a reservation in every budget, or raise ThrottledError (429 with Retry-After)."""

    async def failed(self, attempt: Attempt) -> None:
        """The password was wrong: the reservation becomes a failure."""

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: forget the pair's failures and remember the pair as known."""

    async def release(self, attempt: Attempt) -> None:
        """No password was checked (refused by the gate, cancelled): drop the reservation."""

    async def prune(self) -> int:
        """Forget counters and known pairs that no longer matter; return how many were dropped."""


class RateLimiter(Protocol):
    """A per-key request rate limit."""

    async def hit(self, key: str) -> None:
        """Count one request, or raise ThrottledError when the key is over its rate."""

    async def prune(self) -> int:
        """Forget keys whose bucket is full again; return how many were dropped."""


# -- the rules, shared by the in-process and the stored throttle ----------------------------------------------

PAIR, ADDRESS, USER = "pair", "address", "user"  # the budgets' names


@dataclass
class Counter:
    """One key's count in one budget."""

    failures: int = 0
    pending: int = 0  # reservations not settled yet
    locked_until: float = 0.0
    last: float = 0.0  # last reservation or failure


@dataclass(frozen=True)
class BudgetRule:
    """How one budget counts: failures plus in-flight attempts up to `limit`, then lockouts that double."""

    limit: int
    lockout: float

    def wait(self, counter: Counter | None, now: float) -> float | None:
        """Seconds until the key may try again (0 < s), or None when an attempt may start now."""
        if counter is None:
            return None
        if counter.locked_until > now:
            return counter.locked_until - now
        if counter.failures >= self.limit:  # the lockout passed: one at a time, the next failure relocks
            return None if counter.pending == 0 else 1.0
        return None if counter.failures + counter.pending < self.limit else 1.0

    def active(self, counter: Counter | None) -> bool:
        """True when the key has recent failures or attempts in flight."""
        return counter is not None and (counter.failures > 0 or counter.pending > 0)

    def take(self, counter: Counter, now: float) -> None:
        """Reserve an attempt."""
        counter.pending += 1
        counter.last = now

    def fail(self, counter: Counter, now: float) -> None:
        """Turn a reservation into a failure, locking the key once it reached the limit."""
        counter.pending = max(0, counter.pending - 1)
        counter.failures += 1
        counter.last = now
        if counter.failures >= self.limit:
            doublings = min(counter.failures - self.limit, 16)
            counter.locked_until = now + min(self.lockout * 2**doublings, MAX_LOCKOUT)

    def release(self, counter: Counter, *, forget: bool = False) -> None:
        """Drop a reservation without counting a failure; `forget` also clears the failures (a success)."""
        counter.pending = max(0, counter.pending - 1)
        if forget:
            counter.failures, counter.locked_until = 0, 0.0


def stale(counter: Counter, now: float) -> bool:
    """True when the counter is the same as none: nothing in flight, not locked, quiet for MAX_LOCKOUT."""
    return counter.pending == 0 and counter.locked_until <= now and now - counter.last > MAX_LOCKOUT


def lane_of(known: bool, address_active: bool) -> Lane:
    """A known pair goes first; an unknown one last when its address has failures or attempts in flight."""
    if known:
        return Lane.KNOWN
    return Lane.SUSPECT if address_active else Lane.CLEAN


def budget_keys(attempt: Attempt) -> list[tuple[str, str]]:
    """The (budget, key) pairs an attempt reserves: a known pair its own only, else pair, address and user."""
    pair = (PAIR, pair_key(attempt.username, attempt.address))
    if attempt.known:
        return [pair]
    return [pair, (ADDRESS, attempt.address), (USER, attempt.username)]


def pair_key(username: str, address: str) -> str:
    """The pair budget's key."""
    return f"{address} {username}"


def clip(username: str) -> str:
    """The username as keys hold it (a 10 kB name costs no more memory than a short one)."""
    return username[:_USERNAME_CHARS]


def refusal(waits: list[float]) -> ThrottledError | None:
    """The 429 for the longest of the budgets' waits (None: no budget is spent)."""
    if not waits:
        return None
    seconds = max(1, math.ceil(max(waits)))
    return ThrottledError(f"too many failed logins; try again in {seconds} s", retry_after=seconds)


@dataclass(frozen=True)
class TokenBucket:
    """A rate limit's rule: `capacity` requests, refilled at `rate` a second."""

    capacity: float
    rate: float

    @classmethod
    def per_minute(cls, requests: int) -> TokenBucket:
        """`requests` a minute, bursts up to that."""
        return cls(float(requests), requests / 60.0)

    def tokens(self, saved: tuple[float, float] | None, now: float) -> float:
        """The tokens now, from (tokens, when) saved at the last request (None: a full bucket)."""
        tokens, when = saved if saved is not None else (self.capacity, now)
        return min(self.capacity, tokens + max(0.0, now - when) * self.rate)

    def refusal(self, tokens: float) -> ThrottledError | None:
        """The 429 when less than one token is left, with the seconds until one is back."""
        if tokens >= 1:
            return None
        wait = max(1, math.ceil((1 - tokens) / self.rate))
        return ThrottledError(f"too many requests; try again in {wait} s", retry_after=wait)

    @property
    def refill_secs(self) -> float:
        """How long an empty bucket takes to be full again: a key untouched this long is the same as none."""
        return self.capacity / self.rate if self.rate > 0 else math.inf


# -- in this process --------------------------------------------------------------------------------------------


class Budget:
    """One budget's counters in memory, bounded by pruning."""

    def __init__(self, limit: int, lockout: float, max_keys: int = _MAX_KEYS) -> None:
        self.rule = BudgetRule(limit, lockout)
        self.max_keys = max_keys
        self._counters: dict[str, Counter] = {}

    def wait(self, key: str, now: float) -> float | None:
        """Seconds until `key` may try again (0 < s), or None when an attempt may start now."""
        return self.rule.wait(self._current(key, now), now)

    def active(self, key: str, now: float) -> bool:
        """True when `key` has recent failures or attempts in flight."""
        return self.rule.active(self._current(key, now))

    def take(self, key: str, now: float) -> None:
        """Reserve an attempt."""
        if key not in self._counters and len(self._counters) >= self.max_keys:
            self._prune(now)
        self.rule.take(self._counters.setdefault(key, Counter()), now)

    def fail(self, key: str, now: float) -> None:
        """Turn a reservation into a failure, locking the key once it reached the limit."""
        self.rule.fail(self._counters.setdefault(key, Counter()), now)

    def release(self, key: str, *, forget: bool = False) -> None:
        """Drop a reservation without counting a failure; `forget` also clears the key's failures (a success)."""
        counter = self._counters.get(key)
        if counter is not None:
            self.rule.release(counter, forget=forget)

    def __len__(self) -> int:
        return len(self._counters)

    def _current(self, key: str, now: float) -> Counter | None:
        counter = self._counters.get(key)
        if counter is not None and stale(counter, now):
            del self._counters[key]
            return None
        return counter

    def _prune(self, now: float) -> None:
        """Drop stale counters, then (oldest first) unlocked idle ones; locked ones expire within MAX_LOCKOUT."""
        for key in [k for k, c in self._counters.items() if stale(c, now)]:
            del self._counters[key]
        excess = len(self._counters) - self.max_keys + 1
        if excess > 0:
            idle = [k for k, c in self._counters.items() if c.pending == 0 and c.locked_until <= now]
            for key in idle[:excess]:
                del self._counters[key]


class MemoryLoginThrottle:
    """The in-process LoginThrottle: one event loop, so each method runs without interleaving."""

    def __init__(
        self,
        *,
        pair_limit: int = 5,
        address_limit: int = 10,
        user_limit: int = 20,
        lockout: float = 30.0,
        clock: Clock = time.monotonic,
        max_keys: int = _MAX_KEYS,
    ) -> None:
        self.clock = clock
        self.pairs = Budget(pair_limit, lockout, max_keys)
        self.addresses = Budget(address_limit, lockout, max_keys)
        self.users = Budget(user_limit, lockout, max_keys)
        self.max_keys = max_keys
        self._budgets = {PAIR: self.pairs, ADDRESS: self.addresses, USER: self.users}
        self._known: dict[tuple[str, str], float] = {}  # (username, address) -> last success, oldest first

    async def reserve(self, username: str, address: str) -> Attempt:
        """Refuse when any budget is spent (429 + Retry-After), else reserve in each."""
        now = self.clock()
        username = clip(username)
        known = self.is_known(username, address, now)
        attempt = Attempt(username, address, lane_of(known, self.addresses.active(address, now)), now)
        budgets = self._reserved(attempt)
        if error := refusal([w for budget, key in budgets if (w := budget.wait(key, now)) is not None]):
            raise error
        for budget, key in budgets:
            budget.take(key, now)
        return attempt

    async def failed(self, attempt: Attempt) -> None:
        """Count the failure in every budget the attempt reserved."""
        now = self.clock()
        for budget, key in self._reserved(attempt):
            budget.fail(key, now)

    async def succeeded(self, attempt: Attempt) -> None:
        """Clear the pair; the address and username budgets only drop the reservation (others may be guessing)."""
        for budget, key in self._reserved(attempt):
            budget.release(key, forget=budget is self.pairs)
        pair = (attempt.username, attempt.address)
        self._known.pop(pair, None)
        self._known[pair] = self.clock()
        while len(self._known) > self.max_keys:
            del self._known[next(iter(self._known))]

    async def release(self, attempt: Attempt) -> None:
        """Drop every reservation of the attempt."""
        for budget, key in self._reserved(attempt):
            budget.release(key)

    async def prune(self) -> int:
        """Nothing to do: memory is bounded as keys are added."""
        return 0

    def is_known(self, username: str, address: str, now: float) -> bool:
        """True when this pair logged in successfully within KNOWN_FOR."""
        seen = self._known.get((clip(username), address))
        return seen is not None and now - seen < KNOWN_FOR

    def _reserved(self, attempt: Attempt) -> list[tuple[Budget, str]]:
        return [(self._budgets[name], key) for name, key in budget_keys(attempt)]


class BusyError(ThrottledError):
    """Too many password checks are running or waiting: refused at once instead of queued."""


class VerifyGate:
    """At most `slots` password checks at once and `max_waiting` waiting, served by lane: KNOWN pairs first, then
    CLEAN attempts, then SUSPECT ones. Unknown pairs use at most slots - 1 slots (when there are two or more, so
    one is always free for a known pair), suspects at most half of those and half the queue; a quarter of the
    queue is kept for known pairs. So a flood, even from fresh addresses, does not make a user's login from where
    she logged in before wait for a slot."""

    def __init__(self, slots: int, max_waiting: int) -> None:
        self.slots = max(1, slots)
        self.unknown_slots = max(1, self.slots - 1)
        self.suspect_slots = max(1, self.unknown_slots // 2)
        self.max_waiting = max_waiting
        self.running = 0
        self.unknown_running = 0
        self.suspect_running = 0
        self._waiting: dict[Lane, deque[asyncio.Future[None]]] = {lane: deque() for lane in Lane}

    @contextlib.asynccontextmanager
    async def slot(self, lane: Lane) -> AsyncIterator[None]:
        """Hold one verification slot, or raise BusyError (429) when this lane's share of the queue is full."""
        await self._acquire(lane)
        try:
            yield
        finally:
            self._release(lane)

    def waiting(self, lane: Lane | None = None) -> int:
        """How many checks wait for a slot (in one lane, or all)."""
        return sum(len(q) for k, q in self._waiting.items() if lane is None or k is lane)

    def _can_run(self, lane: Lane) -> bool:
        if lane is not Lane.KNOWN and self.unknown_running >= self.unknown_slots:
            return False
        full = lane is Lane.SUSPECT and self.suspect_running >= self.suspect_slots
        return self.running < self.slots and not full

    def _room(self, lane: Lane) -> bool:
        if lane is Lane.KNOWN:
            return self.waiting() < self.max_waiting
        unknown_room = self.waiting() < self.max_waiting - self.max_waiting // 4
        return unknown_room and (lane is Lane.CLEAN or self.waiting(Lane.SUSPECT) < self.max_waiting // 2)

    async def _acquire(self, lane: Lane) -> None:
        ahead = any(self._waiting[k] for k in Lane if k <= lane)
        if self._can_run(lane) and not ahead:
            self._start(lane)
            return
        if not self._room(lane):
            raise BusyError("too many logins are being checked right now; try again in 1 s", retry_after=1)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[lane].append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(lane)  # a slot was handed to us as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiting[lane].remove(future)
            raise

    def _start(self, lane: Lane) -> None:
        self.running += 1
        self.unknown_running += lane is not Lane.KNOWN
        self.suspect_running += lane is Lane.SUSPECT

    def _release(self, lane: Lane) -> None:
        self.running -= 1
        self.unknown_running -= lane is not Lane.KNOWN
        self.suspect_running -= lane is Lane.SUSPECT
        for kind in Lane:
            queue = self._waiting[kind]
            while queue and self._can_run(kind):
                future = queue.popleft()
                if not future.done():
                    self._start(kind)
                    future.set_result(None)


async def checked_login(
    throttle: LoginThrottle,
    gate: VerifyGate,
    username: str,
    address: str,
    verify: Callable[[], Awaitable[T | None]],
    refusal_delay: float = REFUSAL_DELAY,
) -> T | None:
    """Reserve, wait for a slot, verify (None = wrong password), settle. A check that started and did not finish
    counts as a failure (hanging up does not escape the count); one refused before it started is released.
    A 429 is answered after `refusal_delay` (a tarpit costing no CPU): a flood at a given concurrency then
    arrives that much slower, and its TLS handshakes stop crowding out real logins."""
    try:
        attempt = await throttle.reserve(username, address)
        started, found = False, None
        try:
            async with gate.slot(attempt.lane):
                started = True
                found = await verify()
        finally:
            if found is not None:
                await throttle.succeeded(attempt)
            else:
                await (throttle.failed if started else throttle.release)(attempt)
    except ThrottledError:
        await asyncio.sleep(refusal_delay)
        raise
    return found


class MemoryRateLimiter:
    """A token bucket per key: `per_minute` requests a minute, bursts up to that; memory bounded."""

    def __init__(self, per_minute: int, clock: Clock = time.monotonic, max_keys: int = _MAX_KEYS) -> None:
        self.bucket = TokenBucket.per_minute(per_minute)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, when)

    async def hit(self, key: str) -> None:
        """Spend one token or raise ThrottledError with the seconds until one is back."""
        now = self.clock()
        tokens = self.bucket.tokens(self._buckets.get(key), now)
        if error := self.bucket.refusal(tokens):
            raise error
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            self._prune(now)
        self._buckets[key] = (tokens - 1, now)

    async def prune(self) -> int:
        """Nothing to do: memory is bounded as keys are added."""
        return 0

    def _prune(self, now: float) -> None:
        """A full bucket is the same as none; if all are busy, drop the oldest."""
        for key in [
            k for k, saved in self._buckets.items() if self.bucket.tokens(saved, now) >= self.bucket.capacity
        ]:
            del self._buckets[key]
        while len(self._buckets) >= self.max_keys:
            del self._buckets[next(iter(self._buckets))]
