"""Every HTTP error path answers `{"error", "code", "details"?}` with the right status (in-process app)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar.testing import TestClient

from helpers import assert_error
from specai import auth
from specai.config import load_settings
from specai.identity.tls import ensure_server_cert, read_cert
from specai.server.app import create_app
from specai.users.directory import add_user, get_user

SECRET = "s" * 40


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """An in-process app with auth on, user alice, a 2 KB body limit."""
    (tmp_path / "spec-ai.config.toml").write_text(
        f'[server]\nmax_body_bytes = 2048\n[auth]\nenabled = true\ntoken_secret = "{SECRET}"\n'
    )
    settings = load_settings(env={"SPECAI_HOME": str(tmp_path)}, cwd=tmp_path)
    add_user(settings.credentials_file, "alice", "pw-one-two")
    app = create_app(settings, read_cert(ensure_server_cert(settings).cert))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def headers(tmp_path: Path) -> dict[str, str]:
    """A valid bearer header for alice."""
    alice = get_user(tmp_path / "credentials.json", "alice")
    token, _ = auth.issue_token(SECRET, "alice", 60, user_id=alice.id)
    return {"Authorization": f"Bearer {token}"}


def test_unknown_route(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(client.get("/nope", headers=headers), 404, "not_found")


def test_wrong_method(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(client.delete("/agents", headers=headers), 405, "method_not_allowed")


def test_missing_token(client: TestClient) -> None:
    body = assert_error(client.get("/agents"), 401, "unauthorized")
    assert "Bearer" in body["error"]


def test_malformed_authorization_header(client: TestClient) -> None:
    assert_error(client.get("/agents", headers={"Authorization": "Basic abc"}), 401, "unauthorized")


def test_validation_error_has_details(client: TestClient, headers: dict[str, str]) -> None:
    body = assert_error(client.post("/query", json={"msg": "x"}, headers=headers), 400, "invalid_request")
    assert body["details"][0]["key"] == "data"


def test_wrong_type(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(client.post("/query", json={"message": 5}, headers=headers), 400, "invalid_request")


def test_malformed_json(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(client.post("/query", content=b"{nope", headers=headers), 400, "invalid_request")


def test_empty_message(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(client.post("/query", json={"message": "  "}, headers=headers), 400, "invalid_request")


def test_nul_in_message_or_session_id(client: TestClient, headers: dict[str, str]) -> None:
    # PostgreSQL text cannot store NUL: refused up front on every engine instead of failing at the insert
    assert_error(client.post("/query", json={"message": "a\x00b"}, headers=headers), 400, "invalid_request")
    body = {"message": "hi", "session_id": "s\x00"}
    assert_error(client.post("/query", json=body, headers=headers), 400, "invalid_request")


def test_out_of_range_temperature(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(
        client.post("/query", json={"message": "x", "temperature": 9}, headers=headers),
        400,
        "invalid_request",
    )


def test_body_too_large(client: TestClient, headers: dict[str, str]) -> None:
    response = client.post(
        "/query", content=b"x" * 5000, headers={**headers, "content-type": "application/json"}
    )
    assert_error(response, 413, "payload_too_large")


def test_unknown_agent_on_stream_is_json_not_sse(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(
        client.post("/stream", json={"message": "x", "agent": "zz"}, headers=headers), 404, "agent_not_found"
    )


def test_stream_flag_on_query(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(
        client.post("/query", json={"message": "x", "stream": True}, headers=headers), 400, "invalid_request"
    )


def test_wrong_password_then_throttled(client: TestClient) -> None:
    for _ in range(5):
        assert_error(
            client.post("/auth/token", json={"username": "alice", "password": "no"}),
            401,
            "invalid_credentials",
        )
    response = client.post("/auth/token", json={"username": "alice", "password": "no"})
    body = assert_error(response, 429, "too_many_attempts")
    assert int(response.headers["retry-after"]) == body["details"]["retry_after"] > 0


def test_token_missing_field(client: TestClient) -> None:
    assert_error(client.post("/auth/token", json={"username": "alice"}), 400, "invalid_request")


def test_hash_requires_token_when_auth_on(client: TestClient) -> None:
    assert_error(client.post("/auth/hash", json={"password": "x"}), 401, "unauthorized")


def test_hash_empty_password(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(client.post("/auth/hash", json={"password": ""}, headers=headers), 400, "invalid_request")
