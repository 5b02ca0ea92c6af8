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


ANY: Any = object()  # "not checked", for assert_openai_error's optional fields


def assert_openai_error(
    response: httpx.Response, status: int, kind: str | None, code: str | None, param: Any = ANY
) -> dict[str, Any]:
    """Assert OpenAI's error body, exactly `{"error": {"message", "type", "param", "code"}}` (what every /v1/*
    error is), with specai's code in `code`; None (or ANY for `param`) leaves a field unchecked. Returns the
    inner object."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert kind is None or error["type"] == kind, error
    assert code is None or error["code"] == code, error
    assert param is ANY or error["param"] == param, error
    assert isinstance(error["message"], str)
    assert error["message"]
    return error
