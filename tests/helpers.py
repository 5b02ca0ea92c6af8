"""Shared assertions for in-process and live tests (processes, servers and SSE live in live.py)."""

from __future__ import annotations

from typing import Any

import httpx


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the canonical error shape `{"error": str, "code": code, "details"?}` and return the body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["error"], str)
    assert body["error"]
    assert set(body) <= {"error", "code", "details"}, body
    return body
