"""End to end against a real `specai server` process over real TLS: identity, auth, fail-closed start, API, shutdown."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from live import (
    PASSWORD,
    Event,
    ServerProcess,
    SseReader,
    add_user,
    free_port,
    make_home,
    parse_sse,
    run_cli,
    write_cert_pair,
)

from helpers import assert_error, assert_openai_error

pytestmark = pytest.mark.live

MOCK_REPLY = "This is a mock response from the test provider."
FINGERPRINT = re.compile(r"^(?:[0-9A-F]{2}:){31}[0-9A-F]{2}$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})$")
PUBLIC_PATHS = {"/health", "/cert", "/auth/token"}


# -- helpers -------------------------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def fingerprint_of_der(der: bytes) -> str:
    return hashlib.sha256(der).digest().hex(":").upper()


def openssl_file_fingerprint(cert: Path) -> str:
    result = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    )
    return result.stdout.strip().split("=", 1)[1]


def openssl_wire_fingerprint(port: int) -> str:
    """The fingerprint of the certificate `openssl s_client` receives on the wire."""
    hello = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "BEGIN CERTIFICATE" in hello.stdout, hello.stdout + hello.stderr
    result = subprocess.run(
        ["openssl", "x509", "-fingerprint", "-sha256", "-noout"],
        input=hello.stdout,
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    )
    return result.stdout.strip().split("=", 1)[1]


def tamper(token: str) -> str:
    """Flip one character in the middle of the signature (the middle avoids the padding bits of the last one)."""
    head, payload, signature = token.split(".")
    index = len(signature) // 2
    flipped = "A" if signature[index] != "A" else "B"
    return ".".join([head, payload, signature[:index] + flipped + signature[index + 1 :]])


def legacy_hash(password: str) -> str:
    """A spec-ai (Rust) PBKDF2 hash, built independently of specai's code."""
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000, 32)
    return base64.urlsafe_b64encode(salt + digest).rstrip(b"=").decode()


# -- module servers ------------------------------------------------------------------------------------------------

API_CONFIG = """\
default_agent = "writer"

[server]
max_body_bytes = 1000

[agents.writer]
prompt = "You write short, clear answers."

[agents.helper]
prompt = "You help."
"""


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Auth disabled; two agents (writer is the default); a small body limit."""
    home = make_home(tmp_path_factory.mktemp("api"))
    (home / "spec-ai.config.toml").write_text(API_CONFIG)
    proc = ServerProcess(home).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def auth_live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Auth enabled with token_expiry_secs = 1234; users alice, carol, and a legacy PBKDF2 user 'olduser'."""
    home = make_home(tmp_path_factory.mktemp("auth"))
    add_user(home, "alice")
    add_user(home, "carol", "carol-pass-1")
    credentials = home / "credentials.json"
    entries = json.loads(credentials.read_text())
    entries.append({"username": "olduser", "password_hash": legacy_hash("legacy-pass-1")})
    credentials.unlink()
    fd = os.open(credentials, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(entries, handle)
    (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\ntoken_expiry_secs = 1234\n")
    proc = ServerProcess(home).start()
    yield proc
    proc.stop()


# -- identity ------------------------------------------------------------------------------------------------------


def test_first_start_creates_identity_and_later_starts_reuse_it(tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"  # does not exist yet: the server creates it
    first = ServerProcess(home, cwd=tmp_path).start()
    try:
        cert_path, key_path = home / "tls" / "server.crt", home / "tls" / "server.key"
        assert cert_path.is_file()
        assert key_path.is_file()
        assert mode(home) == 0o700
        assert mode(key_path) == 0o600
        assert "created a self-signed certificate" in first.text()
        assert FINGERPRINT.match(first.fingerprint), first.fingerprint

        with first.client() as client:
            served = client.get("/cert").json()["fingerprint"]
        der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
        local = run_cli(home, "cert", "fingerprint")
        remote = run_cli(home, "cert", "fingerprint", "--server", first.url)
        assert local.returncode == 0, local.stderr
        assert remote.returncode == 0, remote.stderr

        assert served == first.fingerprint
        assert served == fingerprint_of_der(der)
        assert served == openssl_file_fingerprint(cert_path)
        assert served == openssl_wire_fingerprint(first.port)
        assert local.stdout.strip() == served
        assert remote.stdout.strip() == served
        shown = run_cli(home, "cert", "show", "--server", first.url, "--json")
        assert shown.returncode == 0, shown.stderr
        with first.client() as client:
            assert json.loads(shown.stdout) == client.get("/cert").json()

        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        ips = sans.get_values_for_type(x509.IPAddress)
        assert ipaddress.ip_address("127.0.0.1") in ips  # as an IP SAN, not a DNS name
        assert ipaddress.ip_address("::1") in ips
        assert "localhost" in sans.get_values_for_type(x509.DNSName)
        assert "127.0.0.1" not in sans.get_values_for_type(x509.DNSName)
        cert_bytes, key_bytes = cert_path.read_bytes(), key_path.read_bytes()
    finally:
        first.stop()

    second = ServerProcess(home, cwd=tmp_path).start()
    try:
        assert second.fingerprint == served
        assert "created a self-signed certificate" not in second.text()
        assert cert_path.read_bytes() == cert_bytes
        assert key_path.read_bytes() == key_bytes
        with second.client() as client:
            assert client.get("/cert").json()["fingerprint"] == served
        assert openssl_wire_fingerprint(second.port) == served
    finally:
        second.stop()


def test_san_flag_adds_a_dns_name_to_a_new_certificate(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    proc = ServerProcess(home, "--san", "my.example").start()
    try:
        cert = x509.load_pem_x509_certificate((home / "tls" / "server.crt").read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "my.example" in sans.get_values_for_type(x509.DNSName)
        assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
        with proc.client() as client:
            assert "my.example" in client.get("/cert").json()["san"]
    finally:
        proc.stop()


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_user_certificate_and_key_are_served(tmp_path: Path, kind: str) -> None:
    home = make_home(tmp_path)
    pair = write_cert_pair(tmp_path, kind)
    cert_path, key_path, cert = pair.cert, pair.key, pair.certificate
    header = b"BEGIN RSA PRIVATE KEY" if kind == "rsa" else b"BEGIN EC PRIVATE KEY"
    original_key = key_path.read_bytes()
    assert header in original_key  # PKCS#1 / SEC1, not PKCS#8
    expected = fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))
    proc = ServerProcess(home, "--cert", str(cert_path), "--key", str(key_path)).start()
    try:
        assert proc.fingerprint == expected
        with proc.client() as client:
            body = client.get("/cert").json()
            assert client.get("/health").json()["status"] == "healthy"
        assert body["fingerprint"] == expected
        assert openssl_wire_fingerprint(proc.port) == expected
        assert not (home / "tls" / "server.crt").exists()  # no self-signed identity was made
        assert key_path.read_bytes() == original_key  # the user's key file is left alone
    finally:
        proc.stop()


def test_plain_http_never_gets_a_200(api_server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", api_server.port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = b""
        try:
            while len(reply) < 4096:
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
        except (TimeoutError, ConnectionResetError):
            pass
    assert not reply.startswith(b"HTTP/1.1 200"), reply[:100]
    assert b"healthy" not in reply
    # and the server is still fine afterwards
    with api_server.client() as client:
        assert client.get("/health").status_code == 200


# -- public routes -------------------------------------------------------------------------------------------------


def test_health_shape(api_server: ServerProcess) -> None:
    with api_server.client() as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"status", "version", "uptime_seconds", "active_sessions", "leader", "a2a", "mcp"}
    assert body["leader"] is True  # one process on its own SQLite file always leads
    assert body["a2a"] is True  # both agent protocols are on by default
    assert body["mcp"] is True
    assert body["status"] == "healthy"
    assert body["version"] == run_cli(api_server.home, "--version").stdout.split()[-1]
    assert isinstance(body["uptime_seconds"], int)
    assert body["uptime_seconds"] >= 0
    assert isinstance(body["active_sessions"], int)
    assert body["active_sessions"] >= 0


def test_cert_shape(api_server: ServerProcess) -> None:
    with api_server.client() as client:
        body = client.get("/cert").json()
    assert set(body) == {"fingerprint", "certificate_pem", "not_before", "not_after", "subject", "san"}
    cert = x509.load_pem_x509_certificate(body["certificate_pem"].encode())
    assert body["fingerprint"] == fingerprint_of_der(cert.public_bytes(serialization.Encoding.DER))
    assert body["fingerprint"] == api_server.fingerprint
    for field in ("not_before", "not_after"):
        assert RFC3339.match(body[field]), body[field]
    assert dt.datetime.fromisoformat(body["not_before"].replace("Z", "+00:00")) == cert.not_valid_before_utc
    assert dt.datetime.fromisoformat(body["not_after"].replace("Z", "+00:00")) == cert.not_valid_after_utc
    assert "CN=spec-ai-server-127.0.0.1" in body["subject"]
    assert "O=spec-ai" in body["subject"]
    assert isinstance(body["san"], list)
    assert {"127.0.0.1", "localhost", "::1"} <= set(body["san"])


def test_openapi_schema_is_public(api_server: ServerProcess, auth_live: ServerProcess) -> None:
    for proc in (api_server, auth_live):
        with proc.client() as client:
            response = client.get("/schema/openapi.json")
        assert response.status_code == 200, response.text
        paths = response.json()["paths"]
        assert {"/health", "/cert", "/auth/token", "/agents", "/query", "/stream"} <= set(paths)


def test_auth_token_is_503_when_auth_is_disabled(api_server: ServerProcess) -> None:
    with api_server.client() as client:
        response = client.post("/auth/token", json={"username": "alice", "password": "x"})
    assert_error(response, 503, "auth_disabled")


# -- agents: /agents, /query, /stream ------------------------------------------------------------------------------


def test_agents_lists_configured_profiles_with_the_default(api_server: ServerProcess) -> None:
    with api_server.client() as client:
        body = client.get("/agents").json()
    agents = {agent["id"]: agent for agent in body["agents"]}
    assert set(agents) == {"writer", "helper"}
    assert agents["writer"]["default"] is True
    assert agents["helper"].get("default", False) is False
    assert agents["writer"]["description"] == "You write short, clear answers."
    assert agents["writer"]["available"] is True


def test_stream_sends_start_chunks_end(api_server: ServerProcess) -> None:
    with api_server.client() as client:
        response = client.post("/stream", json={"message": "hello", "agent": "helper"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    kinds = [event.data["type"] for event in events]
    assert kinds[0] == "start", kinds
    assert kinds[-1] == "end", kinds
    assert kinds.count("chunk") >= 2
    assert set(kinds) == {"start", "chunk", "end"}
    assert all(event.id for event in events), events
    assert len({event.id for event in events}) == len(events)
    start, end = events[0].data, events[-1].data
    assert start["agent"] == "helper"
    uuid.UUID(start["session_id"])
    assert end["metadata"]["model"] == "mock-model"
    assert "".join(e.data["text"] for e in events if e.data["type"] == "chunk") == MOCK_REPLY


def test_query_returns_a_query_response(api_server: ServerProcess) -> None:
    with api_server.client() as client:
        fresh = client.post("/query", json={"message": "hello", "agent": "helper"})
        echoed = client.post(
            "/query", json={"message": "again", "agent": "helper", "session_id": "my-session-7"}
        )
        default = client.post("/query", json={"message": "no agent given"})
    assert fresh.status_code == 200, fresh.text
    body = fresh.json()
    assert {"response", "session_id", "agent", "metadata"} <= set(body)
    assert set(body) <= {"response", "session_id", "agent", "metadata", "tool_calls"}
    assert body["response"] == MOCK_REPLY
    assert body["agent"] == "helper"
    assert str(uuid.UUID(body["session_id"])) == body["session_id"]
    metadata = body["metadata"]
    assert set(metadata) >= {"timestamp", "model", "processing_time_ms", "run_id"}
    assert metadata["model"] == "mock-model"
    assert RFC3339.match(metadata["timestamp"]), metadata["timestamp"]
    assert isinstance(metadata["processing_time_ms"], int)
    assert echoed.json()["session_id"] == "my-session-7"
    assert default.status_code == 200
    assert default.json()["agent"] == "writer"


def test_query_errors(api_server: ServerProcess) -> None:
    with api_server.client() as client:
        assert_error(client.post("/query", json={"message": "hi", "stream": True}), 400, "invalid_request")
        body = assert_error(
            client.post("/query", json={"message": "hi", "agent": "nobody"}), 404, "agent_not_found"
        )
        assert "nobody" in body["error"]
        assert_error(
            client.post("/stream", json={"message": "hi", "agent": "nobody"}), 404, "agent_not_found"
        )
        missing = assert_error(client.post("/query", json={"agent": "writer"}), 400, "invalid_request")
        assert missing.get("details"), missing
        assert "message" in json.dumps(missing["details"])
        malformed = client.post(
            "/query", content=b'{"message": "hi",', headers={"content-type": "application/json"}
        )
        assert_error(malformed, 400, "invalid_request")
        assert_error(client.post("/query", json={"message": "   "}), 400, "invalid_request")


def test_body_over_the_limit_is_413(api_server: ServerProcess) -> None:
    big = json.dumps({"message": "x" * 5000})
    with api_server.client() as client:
        sized = client.post("/query", content=big, headers={"content-type": "application/json"})
        assert_error(sized, 413, "payload_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
            for start in range(0, len(big), 500):
                yield big[start : start + 500].encode()

        streamed = client.post("/query", content=chunks(), headers={"content-type": "application/json"})
        assert_error(streamed, 413, "payload_too_large")
    # a fresh connection: after an early 413 the server may drop the old one (see the report)
    with api_server.client() as client:
        assert client.post("/query", json={"message": "small"}).status_code == 200


# -- auth ----------------------------------------------------------------------------------------------------------


def test_every_protected_route_rejects_missing_and_bad_tokens(auth_live: ServerProcess) -> None:
    secret = (auth_live.home / "token_secret").read_text().strip()
    from specai.auth import issue_token

    good = auth_live.login()
    expired, _ = issue_token(secret, "alice", 1, now=int(time.time()) - 100)
    foreign, _ = issue_token("another-secret-" + "z" * 40, "alice", 3600)
    bad_tokens = {"tampered": tamper(good), "expired": expired, "foreign": foreign, "garbage": "not-a-jwt"}
    bodies = {
        "/query": {"message": "hi"},
        "/stream": {"message": "hi"},
        "/auth/hash": {"password": "pw-x-long-enough"},
        "/v1/chat/completions": {"model": "default", "messages": [{"role": "user", "content": "hi"}]},
    }
    bodies["/graph/nodes/{node_id}"] = bodies["/graph/edges/{edge_id}"] = {"properties": {}, "weight": 0.5}
    bodies["/messages/send/{source}"] = {"message_type": "Query"}
    bodies["/messages/ack/{instance_id}"] = {"message_ids": []}
    bodies["/auth/keys"] = {"name": "probe"}
    bodies["/graph/sessions/{session_id}/shares"] = {"username": "nobody"}
    session = {"session_id": "s"}
    queries = {"/graph/nodes": session, "/graph/edges": session, "/graph/stream": session}
    # authenticated, these get past auth and fail on their empty body (or, for /bootstrap, on a home that is no repo)
    refused = {
        ("/graph/nodes", "POST"),
        ("/graph/edges", "POST"),
        ("/bootstrap", "POST"),
        ("/registry/register", "POST"),
        ("/registry/peer-token", "POST"),
        ("/sync/request", "POST"),
        ("/sync/apply", "POST"),
    }
    # a session of sync routes is named, but its graph must be `default` (422 `unknown_graph`), and sync is off
    # here (`/sync/now`: 503, no coordinator), so these answer with their own codes once authenticated
    sync_answers = {
        ("/sync/status/{session_id}/{graph_name}", "GET"): (422, "unknown_graph"),
        ("/sync/enable/{session_id}/{graph_name}", "POST"): (400, "invalid_request"),
        ("/sync/configure/{session_id}/{graph_name}", "POST"): (400, "invalid_request"),
        ("/sync/now/{session_id}/{graph_name}", "POST"): (422, "unknown_graph"),
        ("/sync/bulk/{session_id}", "POST"): (400, "invalid_request"),
        ("/sync/configs/{session_id}", "GET"): (200, None),
    }

    with auth_live.client() as client:
        paths = client.get("/schema/openapi.json").json()["paths"]
        protected = [
            (path, method.upper())
            for path, operations in paths.items()
            if path not in PUBLIC_PATHS
            for method in operations
            if method in {"get", "post", "put", "patch", "delete"}
        ]
        assert {("/agents", "GET"), ("/query", "POST"), ("/stream", "POST"), ("/auth/hash", "POST")} <= set(
            protected
        )
        for path, method in protected:
            url = re.sub(r"\{[^}]+\}", "999999999", path)
            if path in queries:
                url += "?" + "&".join(f"{k}={v}" for k, v in queries[path].items())
            body = bodies.get(path, {}) if method != "GET" else None
            response = client.request(method, url, json=body)
            assert_refused(response, path, 401, "unauthorized")
            for label, token in bad_tokens.items():
                response = client.request(
                    method, url, json=body, headers={"Authorization": f"Bearer {token}"}
                )
                assert response.status_code == 401, (path, method, label, response.text)
                assert_refused(response, path, 401, "unauthorized")
            response = client.request(method, url, json=body, headers={"Authorization": good})  # no "Bearer "
            assert_refused(response, path, 401, "unauthorized")
            if path == "/auth/logout":  # would revoke `good` for the rest of the loop: see test_tokens*.py
                continue
            if path == "/graph/stream":  # an endless SSE response: check its status only
                with client.stream(method, url, headers={"Authorization": f"Bearer {good}"}) as streamed:
                    assert streamed.status_code == 200
                continue
            ok = client.request(method, url, json=body, headers={"Authorization": f"Bearer {good}"})
            if (path, method) in sync_answers:
                status, code = sync_answers[path, method]
                assert ok.status_code == status, (path, method, ok.text)
                if code is not None:
                    assert_refused(ok, path, status, code)
            elif path == "/messages/ack/{instance_id}":  # acknowledging nothing is fine
                assert ok.status_code == 204, ok.text
            elif "{" in path:  # the placeholder id names nothing: authenticated, then not found
                assert ok.status_code == 404, (path, method, ok.text)
                assert assert_refused(ok, path, 404) in ("not_found", "unknown_instance", "model_not_found")
            elif (path, method) in refused:
                assert ok.status_code == 400, (path, method, ok.text)
            elif (path, method) == ("/auth/keys", "POST"):
                assert ok.status_code == 201, ok.text
            else:
                assert ok.status_code == 200, (path, method, ok.text)


def assert_refused(response: httpx.Response, path: str, status: int, code: str | None = None) -> str:
    """The error body of `path`: specai's, or under /v1/ OpenAI's; returns specai's code."""
    if path.startswith("/v1/"):
        return str(assert_openai_error(response, status, None, code)["code"])
    return str(assert_error(response, status, code or response.json()["code"])["code"])


def test_token_shape_and_claims(auth_live: ServerProcess) -> None:
    with auth_live.client() as client:
        response = client.post("/auth/token", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "token_type", "expires_in"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1234
    secret = (auth_live.home / "token_secret").read_text().strip()
    assert mode(auth_live.home / "token_secret") == 0o600
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "HS256"
    claims = jwt.decode(body["token"], secret, algorithms=["HS256"], issuer="specai")
    assert claims["exp"] - claims["iat"] == 1234
    assert claims["iss"] == "specai"
    assert claims["sub"] == "alice"
    assert claims["jti"]
    assert abs(claims["iat"] - time.time()) < 60


def test_legacy_pbkdf2_user_logs_in_and_is_upgraded(auth_live: ServerProcess) -> None:
    credentials = auth_live.home / "credentials.json"
    with auth_live.client() as client:
        wrong = client.post("/auth/token", json={"username": "olduser", "password": "not-it"})
        assert_error(wrong, 401, "invalid_credentials")
        response = client.post("/auth/token", json={"username": "olduser", "password": "legacy-pass-1"})
        assert response.status_code == 200, response.text
        token = response.json()["token"]
        assert client.get("/agents", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        entries = {e["username"]: e["password_hash"] for e in json.loads(credentials.read_text())}
        assert entries["olduser"].startswith("$argon2id$")
        assert mode(credentials) == 0o600
        again = client.post("/auth/token", json={"username": "olduser", "password": "legacy-pass-1"})
        assert again.status_code == 200, again.text


def test_removed_user_token_stops_working(auth_live: ServerProcess) -> None:
    token = auth_live.login("carol", "carol-pass-1")
    headers = {"Authorization": f"Bearer {token}"}
    with auth_live.client() as client:
        assert client.get("/agents", headers=headers).status_code == 200
        result = run_cli(auth_live.home, "auth", "remove-user", "carol")
        assert result.returncode == 0, result.stderr
        first = client.get("/agents", headers=headers)
        deadline = time.monotonic() + 3
        later = first
        while later.status_code != 401 and time.monotonic() < deadline:
            time.sleep(0.1)
            later = client.get("/agents", headers=headers)
        assert_error(later, 401, "unauthorized")
        assert_error(client.post("/query", json={"message": "hi"}, headers=headers), 401, "unauthorized")
        gone = client.post("/auth/token", json={"username": "carol", "password": "carol-pass-1"})
        assert_error(gone, 401, "invalid_credentials")
    # README and `auth remove-user --help`: "their tokens stop working immediately / at once"
    assert first.status_code == 401, (
        f"the removed user's token still worked right after removal: {first.text}"
    )


def test_token_survives_a_server_restart(auth_home: Path) -> None:
    first = ServerProcess(auth_home).start()
    try:
        token = first.login()
    finally:
        first.stop()
    second = ServerProcess(auth_home).start()
    try:
        with second.client(token) as client:
            response = client.get("/agents")
        assert response.status_code == 200, response.text
        assert response.json()["agents"][0]["id"] == "default"
    finally:
        second.stop()


def test_wrong_passwords_are_throttled(auth_server: ServerProcess) -> None:
    statuses = []
    with auth_server.client() as client:
        for _ in range(10):
            response = client.post("/auth/token", json={"username": "alice", "password": "wrong-password"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
            assert_error(response, 401, "invalid_credentials")
        assert statuses[-1] == 429, statuses
        body = assert_error(response, 429, "too_many_attempts")
        retry_after = int(response.headers["Retry-After"])
        assert retry_after > 0
        assert body.get("details", {}).get("retry_after", retry_after) == retry_after
        # while locked, even the right password is refused (no password check runs)
        locked = client.post("/auth/token", json={"username": "alice", "password": PASSWORD})
        assert_error(locked, 429, "too_many_attempts")
        assert int(locked.headers["Retry-After"]) > 0


def test_failed_logins_are_throttled_per_client_address(auth_server: ServerProcess) -> None:
    """Different (unknown) usernames from one address: the address itself gets locked after at most 10 failures."""
    statuses = []
    with auth_server.client() as client:
        for attempt in range(11):
            response = client.post("/auth/token", json={"username": f"guess-{attempt}", "password": "wrong"})
            statuses.append(response.status_code)
            if response.status_code == 429:
                break
            assert_error(response, 401, "invalid_credentials")
        assert statuses[-1] == 429, statuses
        assert_error(response, 429, "too_many_attempts")
        assert int(response.headers["Retry-After"]) > 0
        locked = client.post("/auth/token", json={"username": "alice", "password": PASSWORD})
        assert_error(locked, 429, "too_many_attempts")


# -- fails closed ----------------------------------------------------------------------------------------------------


def _start_fails(home: Path, *args: str, code: int = 3) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = run_cli(home, "server", "--port", str(free_port()), *args, timeout=20)
    assert (
        time.monotonic() - started < 15
    )  # refused at once, not after a timeout (slack for a loaded machine)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "listening on" not in result.stdout
    return result


@pytest.mark.parametrize("content", [None, "{not json", "[]"], ids=["missing", "invalid-json", "no-users"])
def test_auth_without_usable_credentials_refuses_to_start(home: Path, content: str | None) -> None:
    (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\n")
    credentials = home / "credentials.json"
    if content is not None:
        credentials.write_text(content)
        credentials.chmod(0o600)
    result = _start_fails(home)
    assert str(credentials) in result.stderr
    assert "auth add-user" in result.stderr or "JSON" in result.stderr


def test_auth_with_a_malformed_credentials_entry_refuses_to_start(home: Path) -> None:
    (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\n")
    credentials = home / "credentials.json"
    credentials.write_text('[{"username": "alice", "password_hash": 42}]')
    result = _start_fails(home)
    assert str(credentials) in result.stderr


def test_non_loopback_host_without_auth_needs_the_override(home: Path) -> None:
    result = _start_fails(home, "--host", "0.0.0.0")
    assert "--allow-unauthenticated" in result.stderr
    proc = ServerProcess(home, "--host", "0.0.0.0", "--allow-unauthenticated").start()
    try:
        with proc.client() as client:
            assert client.get("/health").json()["status"] == "healthy"
    finally:
        proc.stop()
    assert "Enable [auth]" in result.stderr, (
        result.stderr
    )  # the fix is named intact (not eaten as Rich markup)


def test_bad_config_value_exits_1_naming_key_and_file(home: Path) -> None:
    config = home / "spec-ai.config.toml"
    config.write_text('[server]\nport = "x"\n')
    result = _start_fails(home, code=1)
    assert str(config) in result.stderr
    assert "port" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_cert_without_key_exits_3(home: Path, tmp_path: Path) -> None:
    cert_path = write_cert_pair(tmp_path, "ec").cert
    result = _start_fails(home, "--cert", str(cert_path))
    assert "--key" in result.stderr


def test_mismatched_cert_and_key_exit_3(home: Path, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert_path = write_cert_pair(tmp_path / "a", "ec").cert
    key_path = write_cert_pair(tmp_path / "b", "ec").key
    result = _start_fails(home, "--cert", str(cert_path), "--key", str(key_path))
    assert str(key_path) in result.stderr


def test_missing_cert_file_exits_3(home: Path, tmp_path: Path) -> None:
    key_path = write_cert_pair(tmp_path, "ec").key
    missing = tmp_path / "nope.crt"
    result = _start_fails(home, "--cert", str(missing), "--key", str(key_path))
    assert str(missing) in result.stderr


# -- shutdown ------------------------------------------------------------------------------------------------------


def _is_chunk(event: Event) -> bool:
    return isinstance(event.data, dict) and event.data.get("type") == "chunk"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_with_an_open_stream_stops_within_5_s(home: Path, sig: int) -> None:
    (home / "spec-ai.config.toml").write_text("[model]\nmock_delay_ms = 1000\n")  # ~9 s per reply
    proc = ServerProcess(home).start()
    client = proc.client()
    try:
        reader = SseReader(client, "POST", "/stream", json={"message": "long one"}).start()
        reader.wait_for(lambda events: any(map(_is_chunk, events)), timeout=10)
    finally:
        elapsed = proc.stop(sig)
    reader.join(5)
    client.close()
    assert elapsed < 5, elapsed
    assert not reader.is_alive()
    chunks = [event for event in reader.events if _is_chunk(event)]
    assert 1 <= len(chunks) < 10  # the stream was cut short, not served to the end
    last = reader.events[-1].data
    assert last == {"type": "error", "message": "server is shutting down", "code": "shutting_down"}
    assert "specai server stopped" in proc.text()


def test_sigterm_with_an_in_flight_query_stops_within_5_s(home: Path) -> None:
    (home / "spec-ai.config.toml").write_text("[model]\nmock_delay_ms = 1000\n")
    proc = ServerProcess(home).start()
    outcome: list[Any] = []

    def ask() -> None:
        try:
            with proc.client() as client:
                outcome.append(client.post("/query", json={"message": "slow"}))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=ask, daemon=True)
    try:
        worker.start()
        time.sleep(1.5)  # the reply takes ~9 s (9 words, 1 s apart): the query is in flight now
    finally:
        elapsed = proc.stop(signal.SIGTERM)
    assert elapsed < 5, elapsed
    worker.join(5)
    assert not worker.is_alive()
    assert outcome, "the query never finished"
    assert isinstance(outcome[0], httpx.Response), outcome[0]  # answered, not cut off
    assert_error(outcome[0], 503, "shutting_down")
