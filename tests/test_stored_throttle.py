"""The database-backed login throttle and rate limit: every scenario of test_throttle.py again, on SQLite and on
PostgreSQL; then two "processes" (two throttles on two Stores, i.e. two engines and pools, on one PostgreSQL
database) sharing one budget: failures split over both, concurrent reservations split over both, lockouts, known
pairs, successes, a dead process's reservations expiring; and pruning.

The scenarios are imported from test_throttle.py, so pytest collects them here too, where `throttle` and `limiter`
are the fixtures below (each parametrized over both engines by the `store` fixture)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from databases import pg_admin
from sqlalchemy import func, select
from test_throttle import (
    A,
    B,
    FakeClock,
    fail,
    login,
    retry_after,
    test_a_cancelled_check_counts_as_a_failure,
    test_a_known_pair_is_held_to_its_own_budget_only,
    test_a_refusal_is_answered_after_the_delay,
    test_a_success_does_not_reset_the_address,
    test_after_a_lockout_only_one_attempt_at_a_time,
    test_an_address_guessing_many_usernames_is_locked,
    test_an_attempt_refused_by_the_gate_is_released,
    test_another_address_does_not_lock_the_user_out,
    test_failures_below_the_limit_do_not_lock,
    test_forty_concurrent_attempts_get_at_most_the_limit_of_checks,
    test_known_pairs_expire,
    test_lanes_follow_the_address_and_the_pair,
    test_lockout_doubles_and_is_capped,
    test_pending_attempts_count_toward_the_limit,
    test_quiet_counters_are_forgotten,
    test_rate_limit_allows_a_burst_then_refills,
    test_retry_after_counts_down_and_the_lock_passes,
    test_success_resets_the_pair,
    test_the_pair_locks_after_limit_failures,
    test_the_username_budget_stops_distributed_guessing_but_not_known_pairs,
    test_usernames_are_clipped_in_keys,
)

from specai.config import AuthSettings, DatabaseSettings, Settings
from specai.errors import ThrottledError
from specai.store import Store
from specai.store.schema import login_counters, login_known, rate_buckets
from specai.users.stored_throttle import PENDING_FOR, StoredLoginThrottle, StoredRateLimiter, throttles
from specai.users.throttle import (
    KNOWN_FOR,
    MAX_LOCKOUT,
    Lane,
    MemoryLoginThrottle,
    MemoryRateLimiter,
    VerifyGate,
    checked_login,
)

pytestmark = pytest.mark.anyio

# Collected again here, against the stored throttle and limiter.
__all__ = [
    "test_a_cancelled_check_counts_as_a_failure",
    "test_a_known_pair_is_held_to_its_own_budget_only",
    "test_a_refusal_is_answered_after_the_delay",
    "test_a_success_does_not_reset_the_address",
    "test_after_a_lockout_only_one_attempt_at_a_time",
    "test_an_address_guessing_many_usernames_is_locked",
    "test_an_attempt_refused_by_the_gate_is_released",
    "test_another_address_does_not_lock_the_user_out",
    "test_failures_below_the_limit_do_not_lock",
    "test_forty_concurrent_attempts_get_at_most_the_limit_of_checks",
    "test_known_pairs_expire",
    "test_lanes_follow_the_address_and_the_pair",
    "test_lockout_doubles_and_is_capped",
    "test_pending_attempts_count_toward_the_limit",
    "test_quiet_counters_are_forgotten",
    "test_rate_limit_allows_a_burst_then_refills",
    "test_retry_after_counts_down_and_the_lock_passes",
    "test_success_resets_the_pair",
    "test_the_pair_locks_after_limit_failures",
    "test_the_username_budget_stops_distributed_guessing_but_not_known_pairs",
    "test_usernames_are_clipped_in_keys",
]


def stored(store: Store | Callable[[], Store | None], clock: FakeClock) -> StoredLoginThrottle:
    """test_throttle.py's limits: 3 failures per pair, 6 per address, 8 per username; lockout 10 s, doubling."""
    return StoredLoginThrottle(store, pair_limit=3, address_limit=6, user_limit=8, lockout=10, clock=clock)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def throttle(store: Store, clock: FakeClock) -> StoredLoginThrottle:
    return stored(store, clock)


@pytest.fixture
def limiter(store: Store, clock: FakeClock) -> StoredRateLimiter:
    """3 requests a minute per key."""
    return StoredRateLimiter(store, per_minute=3, clock=clock)


# -- two processes on one PostgreSQL database ---------------------------------------------------------------------


@pytest.fixture
async def stores(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two Stores (each its own engine and pool, as two processes have) on one emptied PostgreSQL database."""
    await pg_admin(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    settings = Settings(home=tmp_path / "home", database=DatabaseSettings(url=pg_url))
    first = await Store.open(settings)
    second = await Store.open(settings)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


@pytest.fixture
def pair(stores: tuple[Store, Store], clock: FakeClock) -> tuple[StoredLoginThrottle, StoredLoginThrottle]:
    """A throttle in each "process", on one wall clock."""
    return stored(stores[0], clock), stored(lambda: stores[1], clock)  # the store itself, or a callable


async def test_failures_split_over_two_processes_trip_the_limit(
    pair: tuple[StoredLoginThrottle, StoredLoginThrottle],
) -> None:
    one, two = pair
    await fail(one, "alice", B)
    await fail(two, "alice", B)
    await fail(one, "alice", B)
    assert await retry_after(one, "alice", B) == 10
    assert await retry_after(two, "alice", B) == 10
    for n in range(3):  # the address budget (6) too: three more usernames, alternating
        await fail(pair[n % 2], f"guess-{n}", B)
    assert await retry_after(two, "carol", B) == 10


async def test_concurrent_reservations_over_two_processes_never_pass_the_limit(
    pair: tuple[StoredLoginThrottle, StoredLoginThrottle],
) -> None:
    async def reserve(n: int, user: str) -> bool:
        try:
            await pair[n % 2].reserve(user, B)
        except ThrottledError:
            return False
        return True

    taken = await asyncio.gather(*(reserve(n, "alice") for n in range(20)))
    assert taken.count(True) == 3  # the pair's limit, not 3 per process
    taken = await asyncio.gather(*(reserve(n, f"user-{n}") for n in range(20)))
    assert taken.count(True) == 3  # the address (limit 6) holds alice's three reservations already


async def test_forty_logins_over_two_processes_get_the_limit_of_checks(
    pair: tuple[StoredLoginThrottle, StoredLoginThrottle],
) -> None:
    """Each process has its own gate, as two servers do; the count is still one."""
    gates = VerifyGate(slots=2, max_waiting=100), VerifyGate(slots=2, max_waiting=100)
    checks = 0

    async def wrong() -> str | None:
        nonlocal checks
        checks += 1
        await asyncio.sleep(0.01)
        return None

    async def one(n: int) -> str:
        try:
            await checked_login(pair[n % 2], gates[n % 2], "alice", B, wrong, refusal_delay=0)
        except ThrottledError:
            return "429"
        return "401"

    results = await asyncio.gather(*(one(n) for n in range(40)))
    assert (checks, results.count("401"), results.count("429")) == (3, 3, 37)
    assert await retry_after(pair[1], "alice", B) == 10


async def test_the_lockout_doubles_across_processes(
    pair: tuple[StoredLoginThrottle, StoredLoginThrottle], clock: FakeClock
) -> None:
    one, two = pair
    await fail(one, "alice", A, 3)
    for n, expected in enumerate((20, 40, 80)):
        clock.advance(MAX_LOCKOUT)
        await fail(pair[n % 2], "alice", A)
        assert await retry_after(pair[(n + 1) % 2], "alice", A) == expected
    clock.advance(MAX_LOCKOUT)  # the lockout passed: one attempt at a time over both
    attempt = await one.reserve("alice", A)
    assert await retry_after(two, "alice", A) == 1
    await one.release(attempt)
    await login(two, "alice", A)


async def test_a_known_pair_and_a_success_are_seen_by_the_other_process(
    pair: tuple[StoredLoginThrottle, StoredLoginThrottle],
) -> None:
    one, two = pair
    await fail(one, "alice", B, 2)
    await login(two, "alice", B)  # clears the pair for both, and makes it known
    await fail(one, "alice", B, 2)
    attempt = await one.reserve("alice", B)
    assert attempt.lane is Lane.KNOWN
    await one.succeeded(attempt)  # two failures after the success, not four
    for n in range(4):  # alice's first two failures (unknown then) count for the address: 6 in all
        await fail(pair[n % 2], f"guess-{n}", B)
    assert await retry_after(one, "bob", B) == 10  # the address is spent for pairs it never logged in
    await login(two, "alice", B)  # alice's pair is held to its own budget only


async def test_a_dead_process_reservations_expire(
    stores: tuple[Store, Store], pair: tuple[StoredLoginThrottle, StoredLoginThrottle], clock: FakeClock
) -> None:
    one, two = pair
    for _ in range(3):
        await one.reserve("alice", B)  # never settled:
    await stores[0].close()  # the process died
    assert await retry_after(two, "alice", B) == 1
    clock.advance(PENDING_FOR)  # a reservation counts for PENDING_FOR at least ...
    assert await retry_after(two, "alice", B) == 1
    clock.advance(PENDING_FOR)  # ... and twice that at most
    attempt = await two.reserve("alice", B)
    assert attempt.lane is Lane.CLEAN  # the address shows nothing in flight either
    await two.failed(attempt)
    await fail(two, "alice", B, 2)
    assert await retry_after(two, "alice", B) == 10  # three full tries, as if the dead ones never were


async def test_a_late_settle_does_not_drop_a_live_reservation(
    pair: tuple[StoredLoginThrottle, StoredLoginThrottle], clock: FakeClock
) -> None:
    one, two = pair
    late = [await one.reserve("alice", B) for _ in range(2)]
    clock.advance(2 * PENDING_FOR)
    live = [await two.reserve("alice", B) for _ in range(3)]
    await one.release(late[0])  # expired already: settling it must not free one of the live three
    assert await retry_after(one, "alice", B) == 1
    await one.failed(late[1])  # its failure counts; no live one is freed either
    assert await retry_after(one, "alice", B) == 1
    for attempt in live:
        await two.release(attempt)
    await fail(one, "alice", B, 2)  # 1 + 2 failures
    assert await retry_after(two, "alice", B) == 10


async def test_mixed_concurrent_traffic_over_two_processes_never_deadlocks(
    pair: tuple[StoredLoginThrottle, StoredLoginThrottle],
) -> None:
    """Attempts over overlapping users and addresses, settled every way, with pruning running: only 429s."""
    rng = random.Random(13)
    users, addresses = ["alice", "bob", "carol"], ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    outcomes: list[str] = []

    async def attempt(n: int) -> None:
        throttle = pair[n % 2]
        try:
            reserved = await throttle.reserve(rng.choice(users), rng.choice(addresses))
        except ThrottledError:
            outcomes.append("429")
            return
        await asyncio.sleep(0)
        settle = rng.choice([throttle.failed, throttle.succeeded, throttle.release])
        await settle(reserved)
        outcomes.append(settle.__name__)

    async def prune() -> None:
        for _ in range(5):
            await pair[0].prune()
            await asyncio.sleep(0)

    await asyncio.gather(prune(), *(attempt(n) for n in range(120)))
    assert len(outcomes) == 120
    assert {"429", "failed", "succeeded", "release"} >= set(outcomes)
    assert "429" in outcomes
    assert "failed" in outcomes


async def test_the_rate_limit_is_shared_by_two_processes(
    stores: tuple[Store, Store], clock: FakeClock
) -> None:
    one, two = (StoredRateLimiter(store, per_minute=3, clock=clock) for store in stores)
    await one.hit("alice")
    await two.hit("alice")
    await one.hit("alice")
    for limiter in (one, two):
        with pytest.raises(ThrottledError) as info:
            await limiter.hit("alice")
        assert (info.value.status, info.value.code, info.value.retry_after) == (429, "too_many_attempts", 20)
    taken = await asyncio.gather(*(_hit(one if n % 2 else two, "bob") for n in range(20)))
    assert taken.count(True) == 3
    clock.advance(20)
    await two.hit("alice")
    with pytest.raises(ThrottledError):
        await one.hit("alice")


async def _hit(limiter: StoredRateLimiter, key: str) -> bool:
    try:
        await limiter.hit(key)
    except ThrottledError:
        return False
    return True


# -- pruning, the store source, the factory -----------------------------------------------------------------------


async def _count(store: Store, table: object) -> int:
    async with store.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(table)) or 0)  # type: ignore[arg-type]


async def test_a_settle_cut_short_by_cancellation_still_lands(throttle: StoredLoginThrottle) -> None:
    """A request cancelled again while its failure is being written (a hang-up) still counts the failure."""
    for attempt in [await throttle.reserve("alice", B) for _ in range(3)]:
        task = asyncio.create_task(throttle.failed(attempt))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    for _ in range(1000):  # the writes finish on their own
        if await retry_after(throttle, "alice", B) == 10:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the cancelled requests' failures were not counted")


async def test_prune_drops_what_is_the_same_as_nothing(
    store: Store, throttle: StoredLoginThrottle, limiter: StoredRateLimiter, clock: FakeClock
) -> None:
    await fail(throttle, "alice", A, 3)  # locked: kept while locked
    await login(throttle, "bob", B)  # known for KNOWN_FOR; its counters quiet
    await limiter.hit("bob")
    assert (await _count(store, login_counters), await _count(store, login_known)) == (6, 1)
    assert await throttle.prune() == 0
    assert await limiter.prune() == 0
    clock.advance(MAX_LOCKOUT + 1)
    pending = await throttle.reserve("carol", "192.0.2.9")  # in flight: kept
    assert await throttle.prune() == 6  # alice's and bob's counters: the lockout and MAX_LOCKOUT passed
    assert await limiter.prune() == 1  # bob's bucket is full again
    assert (await _count(store, login_counters), await _count(store, rate_buckets)) == (3, 0)
    await throttle.failed(pending)
    clock.advance(KNOWN_FOR)
    assert await throttle.prune() == 3 + 1  # carol's counters, and bob's known pair
    assert (await _count(store, login_counters), await _count(store, login_known)) == (0, 0)
    await login(throttle, "alice", A)  # a pruned counter is a fresh one


async def test_a_failure_on_a_pruned_counter_still_counts(
    throttle: StoredLoginThrottle, clock: FakeClock
) -> None:
    """A settle whose rows went (the check outlived MAX_LOCKOUT) counts on fresh rows, as in memory."""
    await fail(throttle, "alice", A, 2)
    attempt = await throttle.reserve("alice", A)
    clock.advance(MAX_LOCKOUT + 1)
    assert await throttle.prune() == 3
    await throttle.failed(attempt)
    await fail(throttle, "alice", A, 2)
    assert await retry_after(throttle, "alice", A) == 10


async def test_a_store_not_open_yet_is_a_clear_error() -> None:
    throttle = StoredLoginThrottle(lambda: None)
    with pytest.raises(RuntimeError, match="store is not open"):
        await throttle.reserve("alice", A)


async def test_throttles_follow_the_store(store: Store) -> None:
    auth = AuthSettings(max_failed_logins=2, hash_per_minute=1)
    memory = throttles(auth, None)
    assert isinstance(memory[0], MemoryLoginThrottle)
    assert isinstance(memory[1], MemoryRateLimiter)
    login_throttle, hash_limit = throttles(auth, lambda: store)
    assert isinstance(login_throttle, StoredLoginThrottle)
    assert isinstance(hash_limit, StoredRateLimiter)
    await fail(login_throttle, "alice", A, 2)
    assert await retry_after(login_throttle, "alice", A) == auth.lockout_secs
    await hash_limit.hit("alice")
    with pytest.raises(ThrottledError):
        await hash_limit.hit("alice")
