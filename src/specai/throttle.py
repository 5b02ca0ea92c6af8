"""Login throttling: lock a username or client address after repeated failures, with growing lockouts."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from specai.errors import ThrottledError

_MAX_KEYS = 100_000
_MAX_LOCKOUT = 15 * 60


@dataclass
class _Failures:
    count: int = 0
    locked_until: float = 0.0


class LoginThrottle:
    """Counts consecutive failures per key; after `limit` failures the key is locked, longer each time."""

    def __init__(
        self, limit: int = 5, lockout: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.lockout = lockout
        self.clock = clock
        self._failures: dict[str, _Failures] = {}

    def check(self, *keys: str) -> None:
        """Raise ThrottledError when any key is locked."""
        now = self.clock()
        wait = max((self._failures[k].locked_until - now for k in keys if k in self._failures), default=0.0)
        if wait > 0:
            raise ThrottledError(
                f"too many failed logins; try again in {math.ceil(wait)} s", retry_after=math.ceil(wait)
            )

    def failed(self, *keys: str) -> None:
        """Record a failure for each key, locking keys that reached the limit."""
        now = self.clock()
        if len(self._failures) > _MAX_KEYS:
            self._prune(now)
        for key in keys:
            entry = self._failures.setdefault(key, _Failures())
            entry.count += 1
            if entry.count >= self.limit:
                doublings = entry.count - self.limit
                entry.locked_until = now + min(self.lockout * 2 ** min(doublings, 16), _MAX_LOCKOUT)

    def succeeded(self, *keys: str) -> None:
        """Forget the failures of each key."""
        for key in keys:
            self._failures.pop(key, None)

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self._failures.items() if v.locked_until < now]:
            del self._failures[key]
