"""Durations as a person says them ("4 min 10 s", "3 h 5 min", "2 days"), for waits and token lifetimes."""

from __future__ import annotations

import datetime as dt
import time

_UNITS = ((86400, "day"), (3600, "h"), (60, "min"), (1, "s"))


def in_words(seconds: float) -> str:
    """`seconds` rounded up to a whole second, in its largest unit and the next one: `45 s`, `4 min 10 s`,
    `1 day 2 h` (a smaller rest is left out)."""
    left = max(0, -int(-seconds // 1))
    for index, (size, unit) in enumerate(_UNITS):
        if left >= size or size == 1:
            count, rest = divmod(left, size)
            text = _amount(count, unit)
            if index + 1 < len(_UNITS) and (smaller := rest // _UNITS[index + 1][0]):
                text += " " + _amount(smaller, _UNITS[index + 1][1])
            return text
    raise AssertionError("unreachable: the last unit is one second")


def _amount(count: int, unit: str) -> str:
    return f"{count} {unit}{'s' if unit == 'day' and count != 1 else ''}"


def utc_stamp(epoch: int | None) -> str | None:
    """An epoch second as RFC 3339 in UTC (`2026-12-02T07:45:00Z`), for JSON output; None stays None."""
    return (
        None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")
    )


def until(epoch: int) -> str:
    """A deadline for a person: local time and how far off, `2026-12-03 07:45 (in 23 h 59 min)` or
    `... (EXPIRED 5 min ago)`."""
    local = time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))
    left = epoch - time.time()
    return f"{local} (in {in_words(left)})" if left > 0 else f"{local} (EXPIRED {in_words(-left)} ago)"
