"""Liveness and identity: `GET /health` and `GET /cert`."""

from __future__ import annotations

import msgspec


class HealthOut(msgspec.Struct):
    """GET /health."""

    status: str
    version: str
    uptime_seconds: int
    active_sessions: int
    leader: bool | None = None  # this process runs the singleton jobs now (None: a server that does not say)
    a2a: bool | None = None  # serves A2A (the card at /.well-known/agent-card.json); None: does not say
    mcp: bool | None = None  # serves MCP at /mcp; None: does not say


class CertOut(msgspec.Struct):
    """GET /cert: the server's identity, read from the certificate it serves."""

    fingerprint: str
    certificate_pem: str
    not_before: str
    not_after: str
    subject: str
    san: list[str]
