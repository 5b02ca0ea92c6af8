"""The one checker per kind of id (session, node/edge/change, mesh instance) and the one parser of numbers as text.

Why one place: routes, the agent runtime, the graph and the mesh used to check ids each in their own way, so an id
one of them let through (a NUL, say) reached PostgreSQL, which cannot store it, and answered 500.
Numbers: `str.isdigit()` is true for '²' and `int()` accepts Arabic-Indic digits, so '1²' used to reach `int()` and
fail with a 500 while '١٢' was silently read as 12. Ids are 64-bit, so a larger number names nothing.
"""

from __future__ import annotations

import re
from typing import Any

from specai.errors import InvalidRequestError

MAX_ID = 2**63 - 1
MAX_SESSION_ID_LENGTH = 128
SESSION_ID_CHARACTERS = "letters, digits and - _ . : @"
MAX_INSTANCE_ID = 128
_NEW_SESSION_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")  # safe as one URL path segment, unescaped
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


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


# --- graph entities: nodes, edges and changelog entries have 64-bit ids -------------------------------------------


def in_id_range(value: int) -> bool:
    """Whether a node, edge or change id fits in 64 bits (a larger number names nothing)."""
    return 0 <= value <= MAX_ID


def check_node_id(value: int, name: str = "node_id") -> int:
    """A node (or edge, or change) id from 0 to MAX_ID, or InvalidRequestError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or not in_id_range(value):
        raise InvalidRequestError(f"{name} must be from 0 to {MAX_ID}, got {value}")
    return value


# --- sessions (agent conversations and graph sessions share one id space) -----------------------------------------


def check_session_id(session_id: Any) -> str:
    """Return the id when it is 1-128 characters (no NUL), else raise InvalidRequestError."""
    if not isinstance(session_id, str) or not 1 <= len(session_id) <= MAX_SESSION_ID_LENGTH:
        raise InvalidRequestError(f"session id must be 1 to {MAX_SESSION_ID_LENGTH} characters")
    if "\x00" in session_id:
        raise InvalidRequestError("session id must not contain NUL characters")
    return session_id


def check_new_session_id(session_id: Any) -> str:
    """The rule for ids of sessions being created: ASCII letters, digits and `-_.:@`, not `.` or `..`.

    Every such id is one path segment that `/sessions/{id}` and `/graph/sessions/{id}/shares` can reach; ids
    stored before this rule still work where they are looked up (`check_session_id`), they just cannot be new.
    """
    check_session_id(session_id)
    if not _NEW_SESSION_ID.fullmatch(session_id) or session_id in (".", ".."):
        raise InvalidRequestError(
            f"session id {session_id!r} may only hold {SESSION_ID_CHARACTERS} (1 to {MAX_SESSION_ID_LENGTH}), "
            "and must not be '.' or '..'"
        )
    return str(session_id)


# --- mesh instances ------------------------------------------------------------------------------------------------


def is_instance_id(value: Any) -> bool:
    """1-128 letters, digits and `._:-`, starting with a letter or digit."""
    return isinstance(value, str) and len(value) <= MAX_INSTANCE_ID and bool(_INSTANCE_ID.fullmatch(value))


def check_instance_id(value: Any, name: str = "instance_id") -> str:
    """The mesh instance id when `is_instance_id` accepts it, else InvalidRequestError naming `name`."""
    if not is_instance_id(value):
        raise InvalidRequestError(
            f"{name} must be 1 to {MAX_INSTANCE_ID} letters, digits or . _ : - (starting with a letter or digit)"
        )
    return str(value)
