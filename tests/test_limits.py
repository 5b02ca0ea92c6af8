"""Request limits (JSON depth, NUL, digits, session ids), security headers, CORS and offline OpenAPI (in-process app)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import ENGINES, database_toml, seed_users
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import TestClient
from live import ServerProcess

from helpers import assert_error, assert_openai_error
from specai.config import load_settings
from specai.identity.tls import ensure_server_cert, read_cert
from specai.server.app import create_app
from specai.server.limits import MAX_JSON_DEPTH, has_nul, too_deep
from specai.users.directory import add_user

PASSWORD = "pw-one-two"
DEEP = b"[" * 10_000 + b"]" * 10_000
JSON = {"content-type": "application/json"}


def _app(home: Path, config: str) -> Litestar:
    (home / "spec-ai.config.toml").write_text(config)
    settings = load_settings(env={"SPECAI_HOME": str(home)}, cwd=home)
    if settings.auth.enabled:
        add_user(settings.credentials_file, "alice", PASSWORD)  # the first user: an admin
        seed_users(settings)
    return create_app(settings, cert=read_cert(ensure_server_cert(settings).cert))


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Litestar]]:
    """Auth on, admin alice logged in (her token is on every request); one app for the module."""
    app = _app(
        tmp_path_factory.mktemp("limits"), '[auth]\nenabled = true\ntoken_secret = "' + "s" * 40 + '"\n'
    )
    with TestClient(app) as test_client:
        login = test_client.post("/auth/token", json={"username": "alice", "password": PASSWORD})
        assert login.status_code == 200, login.text
        test_client.headers["Authorization"] = f"Bearer {login.json()['token']}"
        yield test_client


@pytest.fixture(scope="module")
def open_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Litestar]]:
    """Auth off, default settings."""
    with TestClient(_app(tmp_path_factory.mktemp("open"), "")) as test_client:
        yield test_client


# --- the scanners ---------------------------------------------------------------------------------------------


def test_depth_counts_brackets_outside_strings_only() -> None:
    assert not too_deep(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    assert too_deep(b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1))
    assert too_deep(b'{"a":' * 65 + b"1" + b"}" * 65)
    assert not too_deep(b'["' + b"[" * 5000 + b'"]')  # brackets inside a string are text
    assert not too_deep(b'["\\"' + b"[" * 5000 + b'"]')  # ... also after an escaped quote
    assert not too_deep(b"[" + b"[]," * 5000 + b"[]]")  # many brackets, shallow


def test_nul_is_found_only_where_json_decodes_it() -> None:
    assert has_nul(b'{"a": "x\\u0000"}')
    assert has_nul(b'{"k\\u0000": 1}')
    assert has_nul(b'{"a": "\x00"}')
    assert not has_nul(b'{"a": "x\\\\u0000"}')  # an escaped backslash, then the text u0000
    assert not has_nul(b'{"a": "plain"}')


# --- every route ----------------------------------------------------------------------------------------------


def _every_route(app: Litestar) -> list[tuple[str, str]]:
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = re.sub(r"\{[^}:]+:int\}", "1", route.path)
        path = re.sub(r"\{[^}]+\}", "x", path)
        for method in sorted(route.methods):
            if method not in ("HEAD", "OPTIONS"):
                found.append((str(method), path))
    return found


def test_json_nested_10000_deep_is_400_on_every_route(client: TestClient[Litestar]) -> None:
    routes = _every_route(client.app)
    assert ("POST", "/auth/token") in routes
    assert ("POST", "/registry/register") in routes
    assert len(routes) > 30
    for method, path in routes:
        response = client.request(method, path, content=DEEP, headers=JSON)
        if path.startswith("/v1/"):  # OpenAI's error body there
            message = assert_openai_error(response, 400, "invalid_request_error", "invalid_request")[
                "message"
            ]
        else:
            message = assert_error(response, 400, "invalid_request")["error"]
        assert f"more than {MAX_JSON_DEPTH} levels" in message, (method, path, message)


def test_public_token_route_refuses_deep_json_without_a_token(tmp_path: Path) -> None:
    app = _app(tmp_path, "[auth]\nenabled = true\n")
    with TestClient(app) as anonymous:
        body = assert_error(anonymous.post("/auth/token", content=DEEP, headers=JSON), 400, "invalid_request")
        assert "64" in body["error"]
        deep_object = b'{"username":' * 100 + b'"a"' + b"}" * 100
        assert_error(anonymous.post("/auth/token", content=deep_object, headers=JSON), 400, "invalid_request")
        # a protected route answers 401 before reading the body
        assert_error(anonymous.post("/graph/nodes", content=DEEP, headers=JSON), 401, "unauthorized")


def test_json_64_deep_is_not_refused_for_its_depth(client: TestClient[Litestar]) -> None:
    nested = b'{"a":' * 63 + b"1" + b"}" * 63
    body = b'{"session_id": "d", "node_type": "fact", "label": "x", "properties": ' + nested + b"}"
    response = client.post("/graph/nodes", content=body, headers=JSON)
    assert response.status_code in (201, 400), response.text
    if response.status_code == 400:  # the graph's own properties rule may refuse it, never the depth check
        assert "levels deep" not in response.json()["error"]


# --- NUL ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("GET", "/sessions/a%00b"),
        ("DELETE", "/sessions/a%00b"),
        ("GET", "/graph/nodes?session_id=a%00"),
        ("GET", "/graph/stream?session_id=s&since=1%00"),
        ("GET", "/graph/sessions/a%00/shares"),
        ("GET", "/messages/x%00"),
        ("POST", "/registry/heartbeat/x%00"),
    ],
)
def test_nul_in_path_or_query_is_400(client: TestClient[Litestar], method: str, url: str) -> None:
    body = assert_error(client.request(method, url), 400, "invalid_request")
    assert "NUL" in body["error"]


def _member(**changes: object) -> dict[str, object]:
    member: dict[str, object] = {
        "instance_id": "lim-1",
        "hostname": "lim",
        "port": 9,
        "capabilities": [],
        "agent_profiles": [],
        "base_url": "https://127.0.0.1:9",
        "fingerprint": "AA",
    }
    return {**member, **changes}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/registry/register", _member(hostname="h\x00")),
        ("/registry/register", _member(base_url="https://h\x00:1")),
        ("/registry/register", _member(fingerprint="\x00")),
        ("/registry/register", _member(instance_id="i\x00")),
        ("/messages/send/lim-1", {"message_type": "t", "payload": {"k": "v"}, "correlation_id": "c\x00"}),
        ("/query", {"message": "hi", "session_id": "s\x00"}),
        ("/auth/token", {"username": "alice\x00", "password": PASSWORD}),
        ("/graph/nodes", {"session_id": "s", "node_type": "fact", "label": "x", "properties": {"k\x00": 1}}),
    ],
)
def test_nul_in_any_json_string_is_400(
    client: TestClient[Litestar], path: str, body: dict[str, object]
) -> None:
    found = assert_error(client.post(path, json=body), 400, "invalid_request")
    assert "NUL" in found["error"], found


def test_a_raw_nul_byte_in_a_body_is_400(client: TestClient[Litestar]) -> None:
    response = client.post("/query", content=b'{"message": "a\x00b"}', headers=JSON)
    assert "NUL" in assert_error(response, 400, "invalid_request")["error"]


def test_an_escaped_backslash_before_u0000_is_text_not_nul(open_client: TestClient[Litestar]) -> None:
    response = open_client.post("/query", content=b'{"message": "say \\\\u0000 please"}', headers=JSON)
    assert response.status_code == 200, response.text


# --- digits, cursors, big numbers -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1²", "١٢", "\uff11", "-1", "9" * 5000, "9223372036854775808", " "])
def test_cursors_and_since_take_ascii_digits_only(client: TestClient[Litestar], value: str) -> None:
    quoted = httpx.QueryParams({"v": value}).get("v")
    assert quoted == value
    for url, params in [
        ("/graph/nodes", {"session_id": "s", "cursor": value}),
        ("/graph/edges", {"session_id": "s", "cursor": value}),
        ("/graph/stream", {"session_id": "s", "since": value}),
        ("/messages/x", {"after": value}),
    ]:
        response = client.get(url, params=params)
        assert_error(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "path", ["/graph/nodes/١٢", "/graph/edges/١٢", "/graph/nodes/\uff11"]
)  # U+FF11 FULLWIDTH DIGIT ONE
def test_ids_in_the_path_take_ascii_digits_only(client: TestClient[Litestar], path: str) -> None:
    """`{node_id:int}` reads '١٢' as 12: refused before the handler sees it."""
    body = assert_error(client.get(path), 400, "invalid_request")
    assert "0-9" in body["error"]


def test_a_path_id_int_cannot_parse_matches_no_route(client: TestClient[Litestar]) -> None:
    assert_error(client.get("/graph/nodes/1²"), 404, "not_found")


@pytest.mark.parametrize("value", ["1²".encode(), "١٢".encode(), b"99999999999999999999"])
def test_last_event_id_takes_ascii_digits_only(client: TestClient[Litestar], value: bytes) -> None:
    response = client.get("/graph/stream", params={"session_id": "s"}, headers=[(b"Last-Event-ID", value)])
    assert_error(response, 400, "invalid_request")


# --- session ids ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("session_id", ["a/b", ".", "..", "a b", "a?b", "a#b", "a%2Fb", "é", "a\\b"])
def test_a_session_id_that_no_url_could_reach_is_refused_at_creation(
    client: TestClient[Litestar], session_id: str
) -> None:
    body = assert_error(
        client.post("/query", json={"message": "hi", "session_id": session_id}), 400, "invalid_request"
    )
    assert "letters, digits" in body["error"]
    node = {"session_id": session_id, "node_type": "fact", "label": "x"}
    assert_error(client.post("/graph/nodes", json=node), 400, "invalid_request")
    assert session_id not in {s["id"] for s in client.get("/sessions").json()["sessions"]}
    assert session_id not in {s["session_id"] for s in client.get("/graph/sessions").json()["sessions"]}


def test_every_creatable_session_id_can_be_read_and_deleted(client: TestClient[Litestar]) -> None:
    session_id = "Proj-1_a.b:c@d"
    response = client.post("/query", json={"message": "hi", "session_id": session_id})
    assert response.status_code == 200, response.text
    assert client.get(f"/sessions/{session_id}").status_code == 200
    assert client.delete(f"/sessions/{session_id}").status_code == 204
    assert_error(client.get(f"/sessions/{session_id}"), 404, "not_found")
    node = {"session_id": session_id, "node_type": "fact", "label": "x"}
    assert client.post("/graph/nodes", json=node).status_code == 201
    assert client.get(f"/graph/sessions/{session_id}/shares").status_code == 200


# --- headers, CORS, OpenAPI -----------------------------------------------------------------------------------


def test_security_headers_on_every_response_and_no_store_on_auth(client: TestClient[Litestar]) -> None:
    responses = {
        "ok": client.get("/health"),
        "404": client.get("/nope"),
        "400": client.post("/query", content=DEEP, headers=JSON),
        "401": client.get("/agents", headers={"Authorization": "Bearer nope"}),
        "auth": client.post("/auth/token", json={"username": "alice", "password": PASSWORD}),
        "auth-401": client.post("/auth/token", json={"username": "alice", "password": "wrong"}),
        "schema": client.get("/schema/openapi.json"),
    }
    for name, response in responses.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["strict-transport-security"] == "max-age=31536000", name
    assert responses["auth"].status_code == 200
    assert responses["auth"].headers["cache-control"] == "no-store"
    assert responses["auth-401"].headers["cache-control"] == "no-store"
    assert "no-store" not in responses["ok"].headers.get("cache-control", "")


def test_cors_is_off_by_default(open_client: TestClient[Litestar]) -> None:
    origin = {"Origin": "https://evil.example"}
    response = open_client.get("/health", headers=origin)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    preflight = open_client.options("/query", headers={**origin, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_allows_exactly_the_configured_origins(tmp_path: Path) -> None:
    app = _app(tmp_path, '[server]\ncors_origins = ["https://app.example"]\n')
    with TestClient(app) as cors_client:
        good = cors_client.get("/health", headers={"Origin": "https://app.example"})
        assert good.headers["access-control-allow-origin"] == "https://app.example"
        other = cors_client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_enable_cors_false_wins_over_origins(tmp_path: Path) -> None:
    app = _app(tmp_path, '[server]\nenable_cors = false\ncors_origins = ["https://app.example"]\n')
    with TestClient(app) as cors_client:
        response = cors_client.get("/health", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in response.headers


def test_openapi_is_served_as_files_and_no_html_page_exists(open_client: TestClient[Litestar]) -> None:
    spec = open_client.get("/schema/openapi.json")
    assert spec.status_code == 200
    assert "/health" in spec.json()["paths"]
    assert open_client.get("/schema").json()["openapi"].startswith("3.")
    yaml = open_client.get("/schema/openapi.yaml")
    assert yaml.status_code == 200
    assert "openapi:" in yaml.text
    for page in ("swagger", "redoc", "elements", "rapidoc", "scalar", "oauth2-redirect.html", "x.json"):
        body = assert_error(open_client.get(f"/schema/{page}"), 404, "not_found")
        assert "openapi.json" in body["error"] or "not found" in body["error"].lower()
    for response in (spec, yaml):
        assert "<script" not in response.text


# --- the same over real TLS -----------------------------------------------------------------------------------


def test_a_real_server_refuses_deep_json_on_the_public_token_route(auth_server: ServerProcess) -> None:
    with auth_server.client() as live:
        response = live.post("/auth/token", content=DEEP, headers=JSON)
        body = assert_error(response, 400, "invalid_request")
        assert f"more than {MAX_JSON_DEPTH} levels" in body["error"]
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["strict-transport-security"] == "max-age=31536000"
        nul = live.post("/auth/token", json={"username": "alice\x00", "password": "x"})
        assert "NUL" in assert_error(nul, 400, "invalid_request")["error"]
        health = live.get("/health")
        assert health.status_code == 200
        assert health.headers["x-content-type-options"] == "nosniff"
        assert (
            "access-control-allow-origin"
            not in live.get("/health", headers={"Origin": "https://x.example"}).headers
        )
        assert_error(live.get("/schema/swagger"), 404, "not_found")


def test_an_ack_of_100000_ids_is_400_not_500(client: TestClient[Litestar]) -> None:
    registered = client.post("/registry/register", json=_member())
    assert registered.status_code in (200, 201), registered.text
    ids = [str(n) for n in range(100_000)]
    body = assert_error(client.post("/messages/ack/lim-1", json={"message_ids": ids}), 400, "invalid_request")
    assert "1000" in body["error"]


# --- the inputs that gave 500s on PostgreSQL, on both engines ---------------------------------------------------


@pytest.fixture(params=ENGINES)
def engine_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient[Litestar]]:
    """Auth on, admin alice logged in, the store on SQLite or PostgreSQL."""
    database = database_toml(request)
    app = _app(tmp_path, '[auth]\nenabled = true\ntoken_secret = "' + "t" * 40 + '"\n' + database)
    with TestClient(app) as test_client:
        login = test_client.post("/auth/token", json={"username": "alice", "password": PASSWORD})
        test_client.headers["Authorization"] = f"Bearer {login.json()['token']}"
        yield test_client


def test_every_input_that_gave_a_500_is_a_4xx_with_a_code(engine_client: TestClient[Litestar]) -> None:
    client = engine_client
    assert client.post("/registry/register", json=_member()).status_code in (200, 201)
    cases: list[tuple[str, str, Any, dict[str, Any]]] = [
        ("POST", "/auth/token", None, {"content": DEEP, "headers": JSON}),
        ("POST", "/graph/nodes", None, {"content": b'{"a":' * 940 + b"1" + b"}" * 940, "headers": JSON}),
        ("POST", "/registry/register", _member(hostname="h\x00"), {}),
        ("POST", "/registry/register", _member(base_url="https://h\x00"), {}),
        ("POST", "/registry/register", _member(fingerprint="F\x00"), {}),
        ("POST", "/messages/send/lim-1", {"message_type": "t", "correlation_id": "c\x00"}, {}),
        ("POST", "/query", {"message": "hi", "session_id": "s\x00"}, {}),
        ("POST", "/messages/ack/lim-1", {"message_ids": [str(n) for n in range(100_000)]}, {}),
        ("GET", "/graph/nodes?session_id=s&cursor=1%C2%B2", None, {}),
        ("GET", "/graph/edges?session_id=s&cursor=%D9%A1", None, {}),
        ("GET", "/graph/stream?session_id=s&since=1%C2%B2", None, {}),
        ("GET", "/messages/lim-1?after=1%C2%B2", None, {}),
    ]
    for method, url, body, extra in cases:
        response = (
            client.request(method, url, json=body, **extra)
            if body is not None
            else client.request(method, url, **extra)
        )
        assert_error(response, 400, "invalid_request")
