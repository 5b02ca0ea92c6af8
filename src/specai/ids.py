"""The one parser for whole numbers that arrive as text (cursors, `since`, `Last-Event-ID`): ASCII digits only.

Why: `str.isdigit()` is true for '²' and `int()` accepts Arabic-Indic digits, so '1²' used to reach `int()` and
fail with a 500 while '١٢' was silently read as 12. Ids are 64-bit, so a larger number names nothing.
"""

from __future__ import annotations

from specai.errors import InvalidRequestError

MAX_ID = 2**63 - 1


def is_ascii_number(text: str) -> bool:
    """True for a non-empty run of ASCII digits 0-9 (no sign, no spaces, no other scripts' digits)."""
    return bool(text) and text.isascii() and text.isdigit()


def parse_whole_number(text: str, what: str, maximum: int = MAX_ID) -> int:
    """`text` as an int from 0 to `maximum`, or InvalidRequestError naming `what`."""
    if not isinstance(text, str) or not is_ascii_number(text) or len(text) > len(str(maximum)):
        raise InvalidRequestError(f"{what} must be a whole number written with digits 0-9, got {text!r}")
    value = int(text)
    if value > maximum:
        raise InvalidRequestError(f"{what} must be from 0 to {maximum}, got {text}")
    return value
