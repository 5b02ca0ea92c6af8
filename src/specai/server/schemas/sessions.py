"""A user's stored conversations: `GET /sessions` and `GET /sessions/{session_id}`."""

from __future__ import annotations

from typing import Any

import msgspec


class SessionOut(msgspec.Struct):
    """One conversation and how many messages it holds."""

    id: str
    agent: str
    created_at: str
    updated_at: str
    message_count: int


class SessionListOut(msgspec.Struct):
    """`GET /sessions`, most recently used first."""

    sessions: list[SessionOut]


class MessageOut(msgspec.Struct, omit_defaults=True):
    """One stored message; the tool fields are there only when the message has them."""

    role: str
    content: str
    created_at: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class SessionDetailOut(SessionOut):
    """`GET /sessions/{session_id}`: the session and all of its messages, oldest first."""

    messages: list[MessageOut]
