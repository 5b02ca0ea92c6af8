"""Login throttling with a hand-driven clock: reservations before the check, per-pair/address/user budgets, the
bounded verification gate with its lanes, and the /auth/hash rate limit.

The scenarios that take the `throttle` or `limiter` fixture only use the LoginThrottle and RateLimiter protocols:
test_stored_throttle.py runs them again against the database-backed ones on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from specai.errors import ThrottledError
from specai.users.throttle import (
    KNOWN_FOR,
    MAX_LOCKOUT,
    Attempt,
    BusyError,
    Lane,
    LoginThrottle,
    MemoryLoginThrottle,
    MemoryRateLimiter,
    RateLimiter,
    VerifyGate,
    checked_login,
    client_key,
)

pytestmark = pytest.mark.anyio
A, B = "10.0.0.1", "10.0.0.2"


class FakeClock:
    """A clock the test moves by hand (the stored throttle takes it as epoch seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def throttle(clock: FakeClock) -> MemoryLoginThrottle:
    """3 failures per pair, 6 per address, 8 per username from unknown pairs; lockout 10 s, doubling."""
    return MemoryLoginThrottle(pair_limit=3, address_limit=6, user_limit=8, lockout=10, clock=clock)


async def fail(throttle: LoginThrottle, user: str, address: str, times: int = 1) -> None:
    for _ in range(times):
        await throttle.failed(await throttle.reserve(user, address))


async def login(throttle: LoginThrottle, user: str, address: str) -> None:
    await throttle.succeeded(await throttle.reserve(user, address))


async def retry_after(throttle: LoginThrottle, user: str, address: str) -> int:
    with pytest.raises(ThrottledError) as info:
        await throttle.reserve(user, address)
    return info.value.retry_after


# -- budgets ----------------------------------------------------------------------------------------------------


async def test_failures_below_the_limit_do_not_lock(throttle: LoginThrottle) -> None:
    await fail(throttle, "alice", A, 2)
    await login(throttle, "alice", A)


async def test_the_pair_locks_after_limit_failures(throttle: LoginThrottle) -> None:
    await fail(throttle, "alice", A, 3)
    with pytest.raises(ThrottledError) as info:
        await throttle.reserve("alice", A)
    error = info.value
    assert (error.status, error.code, error.retry_after, error.details) == (
        429,
        "too_many_attempts",
        10,
        {"retry_after": 10},
    )
    assert "try again in 10 s" in error.message


async def test_another_address_does_not_lock_the_user_out(throttle: LoginThrottle) -> None:
    await fail(throttle, "alice", B, 3)
    assert await retry_after(throttle, "alice", B) == 10
    await login(throttle, "alice", A)  # her own address: not refused


async def test_retry_after_counts_down_and_the_lock_passes(throttle: LoginThrottle, clock: FakeClock) -> None:
    await fail(throttle, "alice", A, 3)
    clock.advance(6.5)
    assert await retry_after(throttle, "alice", A) == 4
    clock.advance(3.6)
    await login(throttle, "alice", A)


async def test_lockout_doubles_and_is_capped(throttle: LoginThrottle, clock: FakeClock) -> None:
    await fail(throttle, "alice", A, 3)
    for expected in (20, 40, 80):
        clock.advance(MAX_LOCKOUT)
        await fail(throttle, "alice", A)
        assert await retry_after(throttle, "alice", A) == expected
    for _ in range(10):
        clock.advance(MAX_LOCKOUT)
        await fail(throttle, "alice", A)
    assert await retry_after(throttle, "alice", A) == MAX_LOCKOUT


async def test_after_a_lockout_only_one_attempt_at_a_time(throttle: LoginThrottle, clock: FakeClock) -> None:
    await fail(throttle, "alice", A, 3)
    clock.advance(11)
    first = await throttle.reserve("alice", A)
    assert await retry_after(throttle, "alice", A) == 1  # the first is still being checked
    await throttle.failed(first)
    assert await retry_after(throttle, "alice", A) == 20


async def test_success_resets_the_pair(throttle: LoginThrottle, clock: FakeClock) -> None:
    await fail(throttle, "alice", A, 2)
    await login(throttle, "alice", A)
    await fail(throttle, "alice", A, 2)
    await login(throttle, "alice", A)  # two more failures, not four


async def test_quiet_counters_are_forgotten(throttle: LoginThrottle, clock: FakeClock) -> None:
    await fail(throttle, "alice", A, 2)
    clock.advance(MAX_LOCKOUT + 1)
    await fail(throttle, "alice", A, 2)
    await login(throttle, "alice", A)


async def test_an_address_guessing_many_usernames_is_locked(throttle: LoginThrottle) -> None:
    for n in range(6):
        await fail(throttle, f"guess-{n}", B)
    assert await retry_after(throttle, "someone-else", B) == 10
    assert await retry_after(throttle, "alice", B) == 10  # even with the right password: no check runs
    await login(throttle, "alice", A)


async def test_a_success_does_not_reset_the_address(throttle: LoginThrottle) -> None:
    """Mallory cannot keep guessing from her address by logging in as herself between guesses."""
    for n in range(5):
        await fail(throttle, f"guess-{n}", B)
        await login(throttle, "mallory", B)
    await fail(throttle, "guess-5", B)
    assert await retry_after(throttle, "guess-6", B) == 10


async def test_the_username_budget_stops_distributed_guessing_but_not_known_pairs(
    throttle: LoginThrottle,
) -> None:
    await login(throttle, "alice", A)  # alice's own address is known from now on
    for n in range(8):
        await fail(throttle, "alice", f"192.0.2.{n}")  # 8 addresses, one guess each
    assert await retry_after(throttle, "alice", "192.0.2.200") == 10  # a new address is refused
    await login(throttle, "alice", A)  # her known address is not
    await login(throttle, "bob", "192.0.2.200")  # nor is another user


async def test_a_known_pair_is_held_to_its_own_budget_only(throttle: LoginThrottle) -> None:
    """Alice behind the same address (a NAT) as a guesser still logs in; her own typos still lock her pair."""
    await login(throttle, "alice", B)
    for n in range(6):
        await fail(throttle, f"guess-{n}", B)
    assert await retry_after(throttle, "bob", B) == 10  # the address is locked for pairs it never logged in
    attempt = await throttle.reserve("alice", B)
    assert attempt.lane is Lane.KNOWN  # and first in line for a check
    await throttle.succeeded(attempt)
    await fail(throttle, "alice", B, 3)
    assert await retry_after(throttle, "alice", B) == 10
    assert await retry_after(throttle, "bob", B) == 10  # her failures did not refill the address budget


async def test_known_pairs_expire(throttle: LoginThrottle, clock: FakeClock) -> None:
    await login(throttle, "alice", A)
    clock.advance(KNOWN_FOR - 1)
    attempt = await throttle.reserve("alice", A)
    assert attempt.lane is Lane.KNOWN
    await throttle.release(attempt)
    clock.advance(2)
    assert (await throttle.reserve("alice", A)).lane is Lane.CLEAN


# -- reservations: concurrency cannot outrun the count ------------------------------------------------------------


async def test_pending_attempts_count_toward_the_limit(throttle: LoginThrottle) -> None:
    attempts = [await throttle.reserve("alice", B) for _ in range(3)]
    assert await retry_after(throttle, "alice", B) == 1  # three checks in flight: the fourth waits
    await throttle.release(attempts[0])  # released, never checked: the slot comes back
    attempts[0] = await throttle.reserve("alice", B)
    for attempt in attempts:
        await throttle.failed(attempt)
    assert await retry_after(throttle, "alice", B) == 10


async def test_forty_concurrent_attempts_get_at_most_the_limit_of_checks(
    throttle: LoginThrottle,
) -> None:
    gate = VerifyGate(slots=2, max_waiting=100)
    checks = 0

    async def wrong() -> str | None:
        nonlocal checks
        checks += 1
        await asyncio.sleep(0.01)
        return None

    async def one() -> str:
        try:
            await checked_login(throttle, gate, "alice", B, wrong, refusal_delay=0)
        except ThrottledError:
            return "429"
        return "401"

    results = await asyncio.gather(*(one() for _ in range(40)))
    assert checks == 3
    assert results.count("429") == 37
    assert await retry_after(throttle, "alice", B) == 10


async def test_a_refusal_is_answered_after_the_delay(throttle: LoginThrottle) -> None:
    """The tarpit: a 429 waits (without CPU) so a flood at a fixed concurrency arrives slower."""
    gate = VerifyGate(slots=1, max_waiting=1)

    async def wrong() -> str | None:
        return None

    for _ in range(3):
        await checked_login(throttle, gate, "alice", B, wrong, refusal_delay=0.2)  # checked: not delayed
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ThrottledError):
        await checked_login(throttle, gate, "alice", B, wrong, refusal_delay=0.2)
    assert loop.time() - started >= 0.2


async def test_a_cancelled_check_counts_as_a_failure(throttle: LoginThrottle) -> None:
    gate = VerifyGate(slots=1, max_waiting=10)
    started = asyncio.Event()

    async def slow() -> str | None:
        started.set()
        await asyncio.sleep(10)
        return "alice"

    for _ in range(3):
        started.clear()
        task = asyncio.create_task(checked_login(throttle, gate, "alice", B, slow))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert await retry_after(throttle, "alice", B) == 10
    assert gate.running == 0


async def test_an_attempt_refused_by_the_gate_is_released(throttle: LoginThrottle) -> None:
    gate = VerifyGate(slots=1, max_waiting=1)
    release = asyncio.Event()

    async def held() -> str | None:
        await release.wait()
        return None

    first = asyncio.create_task(checked_login(throttle, gate, "x", "192.0.2.1", held))
    second = asyncio.create_task(checked_login(throttle, gate, "y", "192.0.2.2", held))
    for _ in range(2000):  # until both reserved (a stored throttle takes real I/O) and are in the gate
        if (gate.running, gate.waiting()) == (1, 1):
            break
        await asyncio.sleep(0.005)
    with pytest.raises(BusyError):
        await checked_login(throttle, gate, "alice", B, held, refusal_delay=0)
    release.set()
    assert await asyncio.gather(first, second) == [None, None]
    for _ in range(3):  # the refused attempt left no reservation behind: three full tries remain
        await throttle.failed(await throttle.reserve("alice", B))
    assert await retry_after(throttle, "alice", B) == 10


async def test_lanes_follow_the_address_and_the_pair(throttle: LoginThrottle) -> None:
    first = await throttle.reserve("alice", B)
    assert first.lane is Lane.CLEAN
    second = await throttle.reserve("bob", B)
    assert second.lane is Lane.SUSPECT  # another attempt from B is in flight
    await throttle.failed(first)
    await throttle.succeeded(second)
    assert (await throttle.reserve("carol", B)).lane is Lane.SUSPECT  # B has a failure
    assert (await throttle.reserve("bob", B)).lane is Lane.KNOWN  # bob logged in from B
    assert (await throttle.reserve("alice", A)).lane is Lane.CLEAN


async def test_memory_is_bounded(clock: FakeClock) -> None:
    throttle = MemoryLoginThrottle(pair_limit=3, address_limit=6, user_limit=8, clock=clock, max_keys=50)
    for n in range(500):
        await fail(throttle, f"user-{n}", f"192.0.2.{n % 250}")
        await login(throttle, f"user-{n}", f"198.51.100.{n % 250}")
    assert len(throttle.pairs) <= 50
    assert len(throttle.addresses) <= 50
    assert len(throttle.users) <= 50
    assert len(throttle._known) <= 50


async def test_usernames_are_clipped_in_keys(throttle: LoginThrottle) -> None:
    attempt = await throttle.reserve("a" * 10_000, A)
    assert attempt == Attempt("a" * 64, A, Lane.CLEAN)


def test_client_key_groups_ipv6_by_64_and_unmaps_ipv4() -> None:
    assert client_key("10.0.0.1") == "10.0.0.1"
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") == "2001:db8:0:1::/64"
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert client_key(None) == "unknown"
    assert client_key("testclient") == "testclient"


# -- the gate ---------------------------------------------------------------------------------------------------


async def hold(gate: VerifyGate, lane: Lane, entered: list[str], name: str, release: asyncio.Event) -> None:
    async with gate.slot(lane):
        entered.append(name)
        await release.wait()


async def test_the_gate_bounds_running_and_waiting_checks() -> None:
    gate = VerifyGate(slots=2, max_waiting=2)
    release, entered = asyncio.Event(), list[str]()
    tasks = [asyncio.create_task(hold(gate, Lane.KNOWN, entered, str(n), release)) for n in range(4)]
    await asyncio.sleep(0)
    assert (gate.running, gate.waiting()) == (2, 2)
    with pytest.raises(BusyError) as info:
        async with gate.slot(Lane.KNOWN):
            pass
    assert (info.value.status, info.value.code, info.value.retry_after) == (429, "too_many_attempts", 1)
    release.set()
    await asyncio.gather(*tasks)
    assert sorted(entered) == ["0", "1", "2", "3"]
    assert (gate.running, gate.waiting()) == (0, 0)


async def test_unknown_pairs_leave_one_slot_to_known_ones() -> None:
    gate = VerifyGate(slots=3, max_waiting=8)
    release, entered = asyncio.Event(), list[str]()
    tasks = [asyncio.create_task(hold(gate, Lane.CLEAN, entered, f"c{n}", release)) for n in range(3)]
    await asyncio.sleep(0)
    assert (gate.running, gate.unknown_running, gate.waiting(Lane.CLEAN)) == (2, 2, 1)
    tasks.append(asyncio.create_task(hold(gate, Lane.KNOWN, entered, "alice", release)))
    await asyncio.sleep(0)
    assert entered == ["c0", "c1", "alice"]  # alice runs at once, in the slot kept for known pairs
    release.set()
    await asyncio.gather(*tasks)


async def test_suspects_get_half_the_unknown_slots_and_half_the_queue() -> None:
    gate = VerifyGate(slots=5, max_waiting=4)
    release, entered = asyncio.Event(), list[str]()
    suspects = [asyncio.create_task(hold(gate, Lane.SUSPECT, entered, f"s{n}", release)) for n in range(4)]
    await asyncio.sleep(0)
    assert (gate.running, gate.suspect_running, gate.waiting(Lane.SUSPECT)) == (2, 2, 2)
    with pytest.raises(BusyError):  # the suspect half of the queue is full
        async with gate.slot(Lane.SUSPECT):
            pass
    clean = [asyncio.create_task(hold(gate, Lane.CLEAN, entered, f"c{n}", release)) for n in range(2)]
    await asyncio.sleep(0)
    assert entered == [
        "s0",
        "s1",
        "c0",
        "c1",
    ]  # clean attempts run at once, in unknown slots suspects may not take
    release.set()
    await asyncio.gather(*suspects, *clean)


async def test_a_quarter_of_the_queue_is_kept_for_known_pairs() -> None:
    """Fresh addresses (clean, unknown) fill their share; a known pair still queues, and goes first."""
    gate = VerifyGate(slots=1, max_waiting=4)
    release, entered = asyncio.Event(), list[str]()
    flood = [asyncio.create_task(hold(gate, Lane.CLEAN, entered, f"c{n}", release)) for n in range(4)]
    await asyncio.sleep(0)
    assert (gate.running, gate.waiting(Lane.CLEAN)) == (1, 3)
    with pytest.raises(BusyError):
        async with gate.slot(Lane.CLEAN):
            pass
    alice = asyncio.create_task(hold(gate, Lane.KNOWN, entered, "alice", release))
    await asyncio.sleep(0)
    assert gate.waiting(Lane.KNOWN) == 1
    with pytest.raises(BusyError):  # now the whole queue is full
        async with gate.slot(Lane.KNOWN):
            pass
    release.set()
    await asyncio.gather(*flood, alice)
    assert entered[:2] == ["c0", "alice"]


async def test_waiters_are_served_known_then_clean_then_suspect() -> None:
    gate = VerifyGate(slots=1, max_waiting=10)
    release, entered = asyncio.Event(), list[str]()
    tasks = []
    for lane, name in [
        (Lane.CLEAN, "first"),
        (Lane.SUSPECT, "suspect"),
        (Lane.CLEAN, "clean"),
        (Lane.KNOWN, "known"),
    ]:
        tasks.append(asyncio.create_task(hold(gate, lane, entered, name, release)))
        await asyncio.sleep(0)
    release.set()
    await asyncio.gather(*tasks)
    assert entered == ["first", "known", "clean", "suspect"]


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    gate = VerifyGate(slots=1, max_waiting=1)
    release, entered = asyncio.Event(), list[str]()
    running = asyncio.create_task(hold(gate, Lane.CLEAN, entered, "a", release))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold(gate, Lane.CLEAN, entered, "b", release))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting() == 0
    release.set()
    await running
    async with gate.slot(Lane.CLEAN):
        assert gate.running == 1
    assert entered == ["a"]
    assert gate.running == 0


# -- the /auth/hash rate limit ----------------------------------------------------------------------------------


@pytest.fixture
def limiter(clock: FakeClock) -> RateLimiter:
    """3 requests a minute per key."""
    return MemoryRateLimiter(per_minute=3, clock=clock)


async def test_rate_limit_allows_a_burst_then_refills(limiter: RateLimiter, clock: FakeClock) -> None:
    for _ in range(3):
        await limiter.hit("alice")
    with pytest.raises(ThrottledError) as info:
        await limiter.hit("alice")
    assert (info.value.status, info.value.code, info.value.retry_after) == (429, "too_many_attempts", 20)
    await limiter.hit("bob")  # per key
    clock.advance(20)
    await limiter.hit("alice")
    with pytest.raises(ThrottledError):
        await limiter.hit("alice")


async def test_rate_limit_memory_is_bounded(clock: FakeClock) -> None:
    limiter = MemoryRateLimiter(per_minute=3, clock=clock, max_keys=10)
    for n in range(100):
        await limiter.hit(f"user-{n}")
    assert len(limiter._buckets) <= 10
