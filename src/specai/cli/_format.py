"""Server values shown to a person: clipped one-line summaries and timestamps in the local time zone."""

from __future__ import annotations

import datetime as dt
from typing import Any

SUMMARY_WIDTH = 60


def clip(text: str, width: int = SUMMARY_WIDTH) -> str:
    """One line of at most `width` characters, ending in `…` when cut."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def parse_time(stamp: Any) -> dt.datetime | None:
    """An RFC 3339 timestamp from the server (naive ones taken as UTC), or None."""
    if not isinstance(stamp, str):
        return None
    try:
        moment = dt.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def local_time(stamp: Any, seconds: bool = False) -> str:
    """A server timestamp in the local time zone (`YYYY-MM-DD HH:MM[:SS]`); anything else as it came."""
    moment = parse_time(stamp)
    if moment is None:
        return str(stamp or "")
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
