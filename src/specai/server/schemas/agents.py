"""Agents and queries: `GET /agents`, `POST /query` (the body of `POST /stream` too)."""

from __future__ import annotations

from typing import Any

import msgspec


class QueryIn(msgspec.Struct):
    """POST /query and /stream body (the original's QueryRequest)."""

    message: str
    session_id: str | None = None
    agent: str | None = None
    stream: bool = False
    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None  # specai's addition: an extra system prompt for this query (not stored)


class TokenUsage(msgspec.Struct):
    """Token counts reported by the model vendor."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMetadata(msgspec.Struct, omit_defaults=True):
    """When, with which model, and how long a run took; `usage` when the vendor reported it."""

    timestamp: str
    model: str
    processing_time_ms: int
    run_id: str
    usage: TokenUsage | None = None


class QueryOut(msgspec.Struct, omit_defaults=True):
    """The original's QueryResponse; `tool_calls` is omitted when empty."""

    response: str
    session_id: str
    agent: str
    metadata: ResponseMetadata
    tool_calls: list[dict[str, Any]] = msgspec.field(default_factory=list)


class AgentOut(msgspec.Struct, omit_defaults=True):
    """One agent in GET /agents."""

    id: str
    description: str
    provider: str
    model: str
    available: bool
    default: bool = False
    unavailable_reason: str | None = None
    tools: list[str] = msgspec.field(default_factory=list)
    allowed_tools: list[str] | None = None
    denied_tools: list[str] | None = None


class AgentListOut(msgspec.Struct):
    """GET /agents."""

    agents: list[AgentOut]
