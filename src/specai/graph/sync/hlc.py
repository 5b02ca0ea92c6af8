"""Hybrid logical clocks: stamps `(wall_ms, counter, origin)` totally ordered as tuples, with a cap on skew.

A stamp from a member whose clock runs too far ahead is refused, not adopted (adopting it would let one bad clock
win every later conflict); every stamp accepted advances this clock, so a local write made after seeing a remote
value always orders after it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from specai.errors import UnprocessableError

Stamp = tuple[int, int, str]
ZERO: Stamp = (0, 0, "")
DEFAULT_MAX_SKEW_MS = 60_000
_MAX_WALL = 10**15  # far beyond any real clock (year 33658): keeps the text form fixed-width
_MAX_COUNTER = 10**10


class ClockSkewError(UnprocessableError):
    """A remote stamp is further in the future than the configured skew allows."""

    code = "clock_skew"


def wall_ms() -> int:
    """The physical clock in milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def parse_stamp(value: Any) -> Stamp:
    """A stamp from its wire form `[wall_ms, counter, origin]`; ValueError when it is not one."""
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ValueError("a stamp is [wall_ms, counter, origin]")
    wall, counter, origin = value
    if not (isinstance(wall, int) and 0 <= wall < _MAX_WALL and not isinstance(wall, bool)):
        raise ValueError("a stamp's wall_ms must be a non-negative integer")
    if not (isinstance(counter, int) and 0 <= counter < _MAX_COUNTER and not isinstance(counter, bool)):
        raise ValueError("a stamp's counter must be a non-negative integer")
    if not isinstance(origin, str) or not origin:
        raise ValueError("a stamp's origin must be an instance id")
    return (wall, counter, origin)


def stamp_text(stamp: Stamp) -> str:
    """A fixed-width text form that sorts like the tuple (for indexes and conflict records)."""
    return f"{stamp[0]:015d}.{stamp[1]:010d}.{stamp[2]}"


class HybridClock:
    """This member's clock: never goes backwards, never issues the same stamp twice, follows what it has seen."""

    def __init__(
        self, origin: str, max_skew_ms: int = DEFAULT_MAX_SKEW_MS, wall: Callable[[], int] = wall_ms
    ) -> None:
        self.origin = origin
        self.max_skew_ms = max_skew_ms
        self.wall = wall
        self._last = (0, 0)

    def now(self, after: Stamp | None = None) -> Stamp:
        """A new local stamp, later than every stamp issued or seen so far (and than `after`)."""
        if after is not None:
            self._advance(after)
        wall, counter = self._last
        physical = self.wall()
        self._last = (physical, 0) if physical > wall else (wall, counter + 1)
        return (*self._last, self.origin)

    def check(self, stamp: Stamp) -> None:
        """ClockSkewError when `stamp` is further ahead of the physical clock than the skew limit."""
        ahead = stamp[0] - self.wall()
        if ahead > self.max_skew_ms:
            raise ClockSkewError(
                f"a change from {stamp[2]} is stamped {ahead / 1000:.1f} s in the future (more than the "
                f"{self.max_skew_ms / 1000:g} s [sync] max_clock_skew_secs allows); fix that server's clock",
                details={"origin": stamp[2], "ahead_ms": ahead},
            )

    def observe(self, stamp: Stamp) -> None:
        """Follow an accepted remote stamp, so later local stamps order after it."""
        self._advance(stamp)

    def _advance(self, stamp: Stamp) -> None:
        if (stamp[0], stamp[1]) > self._last:
            self._last = (stamp[0], stamp[1])
