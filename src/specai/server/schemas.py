"""Wire types (msgspec Structs) for request and response bodies."""

from typing import Any

import msgspec


class TokenIn(msgspec.Struct, forbid_unknown_fields=True):
    """POST /auth/token body."""

    username: str
    password: str


class TokenOut(msgspec.Struct):
    """A bearer token and its lifetime."""

    token: str
    token_type: str
    expires_in: int


class HashIn(msgspec.Struct, forbid_unknown_fields=True):
    """POST /auth/hash body."""

    password: str


class HashOut(msgspec.Struct):
    """An argon2id PHC string for the credentials file."""

    password_hash: str


class QueryIn(msgspec.Struct):
    """POST /query and /stream body (the original's QueryRequest)."""

    message: str
    session_id: str | None = None
    agent: str | None = None
    stream: bool = False
    temperature: float | None = None
    max_tokens: int | None = None


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


class HealthOut(msgspec.Struct):
    """GET /health."""

    status: str
    version: str
    uptime_seconds: int
    active_sessions: int


class CertOut(msgspec.Struct):
    """GET /cert: the server's identity, read from the certificate it serves."""

    fingerprint: str
    certificate_pem: str
    not_before: str
    not_after: str
    subject: str
    san: list[str]
