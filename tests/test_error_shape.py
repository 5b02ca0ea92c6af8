"""Every HTTP error path answers `{"error", "code", "details"?}` with the right status (in-process app, both engines)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from databases import ENGINES, database_toml, seed_users
from litestar.testing import TestClient

from helpers import assert_error, assert_openai_error
from specai import auth
from specai.config import load_settings
from specai.identity.tls import ensure_server_cert, read_cert
from specai.server.app import create_app
from specai.users.directory import add_user, get_user

SECRET = "s" * 40


@pytest.fixture(params=ENGINES)
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """An in-process app with auth on, user alice (an admin: the only user), a 2 KB body limit, on each engine."""
    (tmp_path / "spec-ai.config.toml").write_text(
        f'[server]\nmax_body_bytes = 2048\n[auth]\nenabled = true\ntoken_secret = "{SECRET}"\n'
        f"{database_toml(request)}"
    )
    settings = load_settings(env={"SPECAI_HOME": str(tmp_path)}, cwd=tmp_path)
    add_user(settings.credentials_file, "alice", "pw-one-two")
    seed_users(settings)
    app = create_app(settings, cert=read_cert(ensure_server_cert(settings).cert))
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


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/sessions/a%00b"),
        ("DELETE", "/sessions/a%00b"),
        ("GET", "/graph/sessions/a%00b/shares"),
        ("GET", "/graph/nodes?session_id=a%00b"),
        ("GET", "/messages/a%00b"),
    ],
)
def test_nul_in_an_id_in_the_path_or_query(
    client: TestClient, headers: dict[str, str], method: str, path: str
) -> None:
    # PostgreSQL cannot even compare with a NUL: each engine answers the same 400, never a 500
    assert_error(client.request(method, path, headers=headers), 400, "invalid_request")


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/query", {"message": "hi", "session_id": "s" * 129}),
        ("POST", "/query", {"message": "hi", "session_id": "new one"}),  # not one URL path segment
        ("GET", "/sessions/" + "s" * 129, None),
        ("DELETE", "/sessions/" + "s" * 129, None),
        ("POST", "/graph/nodes", {"session_id": "s" * 129, "node_type": "fact", "label": "x"}),
        ("POST", "/graph/nodes", {"session_id": "new one", "node_type": "fact", "label": "x"}),
        ("GET", "/graph/nodes?session_id=" + "s" * 129, None),
        ("GET", "/graph/sessions/" + "s" * 129 + "/shares", None),
        ("POST", "/registry/heartbeat/-starts-with-a-dash", None),
        ("GET", "/messages/" + "i" * 129, None),
        ("POST", "/registry/peer-token", {"source": "ok", "audience": "not ok"}),
    ],
)
def test_one_rule_per_kind_of_id(
    client: TestClient, headers: dict[str, str], method: str, path: str, body: Any
) -> None:
    """Session and instance ids get the same 400 from every route that takes them (specai.ids)."""
    assert_error(client.request(method, path, json=body, headers=headers), 400, "invalid_request")


def test_a_missing_session_is_404(client: TestClient, headers: dict[str, str]) -> None:
    assert_error(client.get("/sessions/nobody-has-this", headers=headers), 404, "not_found")
    assert_error(client.delete("/sessions/nobody-has-this", headers=headers), 404, "not_found")


def _last_data(text: str) -> tuple[str | None, Any]:
    """(event name, decoded data) of the last event with JSON data in an SSE body."""
    events = [block for block in text.replace("\r\n", "\n").split("\n\n") if "data:" in block]
    fields: dict[str, str] = {}
    for line in events[-1].splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.strip()
    return fields.get("event"), json.loads(fields["data"])


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        (
            "POST",
            "/stream",
            {"message": "hi"},
            (None, {"type": "error", "message": "server is shutting down", "code": "shutting_down"}),
        ),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "default", "messages": [{"role": "user", "content": "hi"}], "stream": True},
            (
                None,
                {
                    "error": {
                        "message": "server is shutting down",
                        "type": "server_error",
                        "param": None,
                        "code": "shutting_down",
                    }
                },
            ),
        ),
        (
            "GET",
            "/graph/stream?session_id=bye",
            None,
            ("error", {"error": "server is shutting down", "code": "shutting_down"}),
        ),
    ],
    ids=["stream", "chat-completions", "graph-stream"],
)
def test_every_stream_ends_with_one_shutting_down_event(
    client: TestClient, headers: dict[str, str], method: str, path: str, body: Any, expected: Any
) -> None:
    """On shutdown each stream's last event is `shutting_down`, in the error envelope of that stream's protocol."""
    client.app.state.specai.stopping.set()  # what the runner does on SIGTERM, before it cancels requests
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    text = response.text
    if path.startswith("/v1/"):
        assert text.rstrip().endswith("data: [DONE]")
        text = text.rstrip().removesuffix("data: [DONE]")
    assert _last_data(text) == expected


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


# -- /v1/*: the same failures in OpenAI's error body (the OpenAI SDKs show only what is there) ----------------------

CHAT = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/default", "/v1/chat/completions"])
def test_v1_without_a_valid_token_is_an_authentication_error(client: TestClient, path: str) -> None:
    method = "POST" if path.endswith("completions") else "GET"
    body = CHAT if method == "POST" else None
    error = assert_openai_error(
        client.request(method, path, json=body), 401, "authentication_error", "unauthorized"
    )
    assert "Bearer" in error["message"]
    bad = {"Authorization": "Basic abc"}
    assert_openai_error(
        client.request(method, path, json=body, headers=bad), 401, "authentication_error", "unauthorized"
    )
    assert_error(client.get("/agents", headers=bad), 401, "unauthorized")  # the rest keeps specai's shape


def test_v1_with_a_read_only_key_is_a_permission_error(client: TestClient, headers: dict[str, str]) -> None:
    made = client.post("/auth/keys", json={"name": "reader"}, headers=headers)
    assert made.status_code == 201, made.text
    reader = {"Authorization": f"Bearer {made.json()['key']}"}
    assert client.get("/v1/models", headers=reader).status_code == 200
    assert_openai_error(
        client.post("/v1/chat/completions", json=CHAT, headers=reader), 403, "permission_error", "forbidden"
    )
    assert_error(client.post("/query", json={"message": "hi"}, headers=reader), 403, "forbidden")


def test_v1_routing_validation_and_size_errors(client: TestClient, headers: dict[str, str]) -> None:
    assert_openai_error(client.get("/v1/nope", headers=headers), 404, "not_found_error", "not_found")
    assert_openai_error(
        client.delete("/v1/models", headers=headers), 405, "invalid_request_error", "method_not_allowed"
    )
    error = assert_openai_error(
        client.post("/v1/chat/completions", json={"model": 5, "messages": []}, headers=headers),
        400,
        "invalid_request_error",
        "invalid_request",
    )
    assert error["param"] == "model"
    assert_openai_error(
        client.post("/v1/chat/completions", content=b"{nope", headers=headers),
        400,
        "invalid_request_error",
        "invalid_request",
    )
    big = client.post(
        "/v1/chat/completions", content=b"x" * 5000, headers={**headers, "content-type": "application/json"}
    )
    assert_openai_error(big, 413, "invalid_request_error", "payload_too_large")
    missing = client.post("/v1/chat/completions", json={**CHAT, "model": "zz"}, headers=headers)
    error = assert_openai_error(missing, 404, "not_found_error", "model_not_found")
    assert error["message"] == "agent 'zz' not found; available: default"
    assert_error(
        client.post("/query", json={"message": "x", "agent": "zz"}, headers=headers), 404, "agent_not_found"
    )
