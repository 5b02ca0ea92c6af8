"""Liveness and identity: `GET /health` and `GET /cert`."""

from __future__ import annotations

import msgspec


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
