"""Login throttling with an injected clock: lockout after the limit, growing lockouts, reset on success."""

from __future__ import annotations

import pytest

from specai.errors import ThrottledError
from specai.throttle import LoginThrottle


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A hand-driven clock."""
    return FakeClock()


@pytest.fixture
def throttle(clock: FakeClock) -> LoginThrottle:
    """Locks after 3 failures for 10 s (doubling)."""
    return LoginThrottle(limit=3, lockout=10, clock=clock)


def fail(throttle: LoginThrottle, key: str, times: int) -> None:
    for _ in range(times):
        throttle.failed(key)


def retry_after(throttle: LoginThrottle, *keys: str) -> int:
    with pytest.raises(ThrottledError) as info:
        throttle.check(*keys)
    return info.value.retry_after


def test_failures_below_the_limit_do_not_lock(throttle: LoginThrottle) -> None:
    fail(throttle, "alice", 2)
    throttle.check("alice")


def test_locks_after_limit_failures(throttle: LoginThrottle) -> None:
    fail(throttle, "alice", 3)
    with pytest.raises(ThrottledError) as info:
        throttle.check("alice")
    error = info.value
    assert error.retry_after == 10
    assert error.retry_after > 0
    assert error.code == "too_many_attempts"
    assert error.status == 429
    assert error.details == {"retry_after": 10}
    assert "try again in 10 s" in error.message


def test_retry_after_counts_down_and_rounds_up(throttle: LoginThrottle, clock: FakeClock) -> None:
    fail(throttle, "alice", 3)
    clock.advance(6.5)
    assert retry_after(throttle, "alice") == 4


def test_unlocks_after_the_lockout_passes(throttle: LoginThrottle, clock: FakeClock) -> None:
    fail(throttle, "alice", 3)
    clock.advance(9.9)
    assert retry_after(throttle, "alice") == 1
    clock.advance(0.2)
    throttle.check("alice")


def test_lockout_grows_with_further_failures(throttle: LoginThrottle, clock: FakeClock) -> None:
    fail(throttle, "alice", 3)
    assert retry_after(throttle, "alice") == 10
    clock.advance(11)
    throttle.failed("alice")
    assert retry_after(throttle, "alice") == 20
    clock.advance(21)
    throttle.failed("alice")
    assert retry_after(throttle, "alice") == 40


def test_lockout_is_capped_at_fifteen_minutes(throttle: LoginThrottle) -> None:
    fail(throttle, "alice", 40)
    assert retry_after(throttle, "alice") == 15 * 60


def test_success_resets_the_failure_count(throttle: LoginThrottle, clock: FakeClock) -> None:
    fail(throttle, "alice", 3)
    clock.advance(11)
    throttle.succeeded("alice")
    fail(throttle, "alice", 2)
    throttle.check("alice")
    throttle.failed("alice")
    assert retry_after(throttle, "alice") == 10  # back to the first lockout, not a doubled one


def test_keys_are_throttled_independently(throttle: LoginThrottle) -> None:
    throttle.failed("alice", "10.0.0.1")
    throttle.failed("alice", "10.0.0.1")
    throttle.failed("alice", "10.0.0.2")
    throttle.check("bob")
    throttle.check("10.0.0.1")
    assert retry_after(throttle, "alice") == 10
    assert retry_after(throttle, "bob", "alice") == 10  # any locked key refuses the attempt
    throttle.failed("10.0.0.1")
    assert retry_after(throttle, "10.0.0.1") == 10


def test_check_with_no_keys_or_unknown_keys_passes(throttle: LoginThrottle) -> None:
    throttle.check()
    throttle.check("nobody")
