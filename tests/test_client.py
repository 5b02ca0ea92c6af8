"""The client side's shared pieces (pinning, error bodies, following a change feed) in both clients, and the
CLI's start-up: commands imported only when used, with the same help as if every one were loaded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import loopback_server
from typer.testing import CliRunner

from specai.cli import Commands, app
from specai.cli.cert import _pem_fingerprint
from specai.client import SpecaiClient, sse
from specai.client.errors import reason, remote_error, response_error, transport_error
from specai.client.peer import Credentials, Peer
from specai.client.pinning import check_pin, fetch_cert, fetch_cert_async
from specai.client.wire import UnexpectedAnswerError, body_of
from specai.errors import ConnectionFailedError, RemoteError, TlsError, TrustError
from specai.identity.fingerprint import fingerprint_der
from specai.identity.tls import create_self_signed, read_cert
from specai.identity.trust import KnownServers, parse_server
from specai.server.schemas.auth import KeyIn
from specai.server.schemas.graph import BootstrapIn, EdgeIn
from specai.server.schemas.health import HealthOut
from specai.server.schemas.mesh import SendIn

SERVER = parse_server("https://127.0.0.1:3999")
CERT_PEM, KEY_PEM = create_self_signed("127.0.0.1")
DER = ssl.PEM_cert_to_DER_cert(CERT_PEM.decode())
FP = fingerprint_der(DER)
OTHER_FP = "AB:" * 31 + "AB"


# --- error bodies and transport failures ---------------------------------------------------------------------


def test_an_error_body_becomes_a_remote_error_with_its_code_and_details() -> None:
    error = remote_error(409, {"error": "taken", "code": "conflict", "details": {"id": 3}})
    assert (error.message, error.http_status, error.remote_code, error.details) == (
        "taken",
        409,
        "conflict",
        {"id": 3},
    )


@pytest.mark.parametrize("body", [None, "text", ["a"], {"error": "no code"}, {"detail": "litestar's own"}])
def test_an_answer_that_is_not_an_error_body_is_its_status(body: Any) -> None:
    error = remote_error(502, body)
    assert (error.message, error.remote_code, error.details) == ("HTTP 502", "http_error", None)


def test_an_error_answer_that_is_not_json_is_its_status() -> None:
    error = response_error(httpx.Response(500, text="<html>oops</html>"))
    assert (error.message, error.http_status) == ("HTTP 500", 500)


def test_a_refused_certificate_in_the_cause_chain_is_a_trust_error() -> None:
    cause = ssl.SSLCertVerificationError("certificate verify failed")
    exc = httpx.ConnectError("handshake failed")
    exc.__cause__ = cause
    assert isinstance(transport_error(SERVER, exc), TrustError)
    lost = transport_error(SERVER, httpx.ConnectError("[Errno 111] Connection refused"))
    assert isinstance(lost, ConnectionFailedError)
    assert lost.message == "lost the connection to https://127.0.0.1:3999: Connection refused"


def test_reason_is_short() -> None:
    assert reason(ConnectionFailedError("down")) == "down"
    assert reason(ConnectionRefusedError(111, "Connection refused")) == "Connection refused"
    assert reason(TimeoutError()) == "TimeoutError"


# --- pinning -----------------------------------------------------------------------------------------------------


def test_a_pin_is_checked_against_known_servers_then_trusted_then_nothing(tmp_path: Path) -> None:
    known = KnownServers(tmp_path)
    with pytest.raises(TrustError) as unknown:
        check_pin(SERVER, DER, known)
    assert unknown.value.fingerprint == FP
    assert check_pin(SERVER, DER, known, trusted=frozenset({FP})) == FP  # an operator's trusted fingerprint
    assert known.get(SERVER.origin) is None  # ... is not written to known_servers.json
    assert check_pin(SERVER, DER, known, expected=FP.lower().replace(":", "")) == FP
    assert check_pin(SERVER, DER, known) == FP  # pinned by the expected fingerprint
    with pytest.raises(TrustError):
        check_pin(SERVER, DER, known, expected=OTHER_FP, trusted=frozenset({FP}))  # expected beats trusted


def test_a_peer_the_registry_vouched_for_must_present_that_fingerprint() -> None:
    assert check_pin(SERVER, DER, None, expected=FP) == FP
    with pytest.raises(TrustError, match="not the pinned"):
        check_pin(SERVER, DER, None, expected=OTHER_FP)


@contextlib.contextmanager
def tls_listener(tmp_path: Path, handshake: bool = True) -> Iterator[tuple[int, list[bytes]]]:
    """A loopback TLS server with our certificate that records what each connection sends after the handshake
    (or, with `handshake=False`, accepts and says nothing)."""
    (tmp_path / "c.pem").write_bytes(CERT_PEM)
    (tmp_path / "k.pem").write_bytes(KEY_PEM)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    received: list[bytes] = []
    quiet = threading.Event()

    def handle(conn: socket.socket) -> None:
        if not handshake:
            quiet.wait(3)
            return
        conn.settimeout(3)
        with ctx.wrap_socket(conn, server_side=True) as tls:
            received.append(tls.recv(65536))

    try:
        with loopback_server(handle) as port:
            yield port, received
    finally:
        quiet.set()


def test_both_clients_fetch_the_certificate_sending_nothing(tmp_path: Path) -> None:
    with tls_listener(tmp_path) as (port, received):
        address = parse_server(f"https://127.0.0.1:{port}")
        assert fetch_cert(address, timeout=5) == DER
        assert asyncio.run(fetch_cert_async(address, 5)) == DER
    assert received in ([], [b""], [b"", b""])


def test_an_unreachable_or_silent_server_is_a_connection_failure(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed = parse_server(f"https://127.0.0.1:{probe.getsockname()[1]}")
    with pytest.raises(ConnectionFailedError, match=r"cannot reach https://127\.0\.0\.1"):
        fetch_cert(closed, timeout=2)
    with pytest.raises(ConnectionFailedError, match=r"cannot reach https://127\.0\.0\.1"):
        asyncio.run(fetch_cert_async(closed, 2))
    with tls_listener(tmp_path, handshake=False) as (port, _):
        silent = parse_server(f"https://127.0.0.1:{port}")
        with pytest.raises(
            ConnectionFailedError, match=r"TLS handshake with 127\.0\.0\.1:\d+ timed out after 0\.3 s"
        ):
            asyncio.run(fetch_cert_async(silent, 0.3))


def plain_http_listener() -> contextlib.AbstractContextManager[int]:
    """A loopback port that answers whatever arrives with an HTTP 400, as a plain HTTP server does to a TLS hello."""

    def handle(conn: socket.socket) -> None:
        conn.settimeout(3)
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    return loopback_server(handle)


def test_a_plain_http_port_is_said_in_words() -> None:
    with plain_http_listener() as port:
        address = parse_server(f"https://127.0.0.1:{port}")
        expected = (
            f"https://127.0.0.1:{port} answered in plain HTTP, not TLS: is it a specai server (they always use TLS), "
            "or is the URL's port wrong?"
        )
        with pytest.raises(ConnectionFailedError) as blocking:
            fetch_cert(address, timeout=5)
        assert blocking.value.message == expected
        with pytest.raises(ConnectionFailedError) as looped:
            asyncio.run(fetch_cert_async(address, 5))
        assert looped.value.message == expected
        result = CliRunner().invoke(app, ["health", "--server", address.origin, "--fingerprint", FP])
    assert result.exit_code == 1, result.output
    assert result.stderr == f"error: {expected}\n"


def test_a_server_that_never_completes_the_handshake_times_out_in_words(tmp_path: Path) -> None:
    with tls_listener(tmp_path, handshake=False) as (port, _):
        address = parse_server(f"https://127.0.0.1:{port}")
        with pytest.raises(ConnectionFailedError) as info:
            fetch_cert(address, timeout=0.3)
        with pytest.raises(ConnectionFailedError) as looped:
            asyncio.run(fetch_cert_async(address, 0.3))
    assert looped.value.message == info.value.message
    assert info.value.message == (
        f"TLS handshake with 127.0.0.1:{port} timed out after 0.3 s: something accepts connections on that port "
        "but does not speak TLS"
    )


def test_a_refused_connection_asks_whether_the_server_runs() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed = parse_server(f"https://127.0.0.1:{probe.getsockname()[1]}")
    expected = f"cannot reach {closed.origin}: connection refused (is the server running, and on that port?)"
    with pytest.raises(ConnectionFailedError) as blocking:
        fetch_cert(closed, timeout=2)
    assert blocking.value.message == expected
    with pytest.raises(ConnectionFailedError) as looped:
        asyncio.run(fetch_cert_async(closed, 2))
    assert looped.value.message == expected
    result = CliRunner().invoke(app, ["health", "--server", closed.origin])
    assert (result.exit_code, result.stderr) == (1, f"error: {expected}\n")


def test_plain_http_in_an_open_clients_cause_chain_is_said_in_words() -> None:
    cause = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    cause.reason = "WRONG_VERSION_NUMBER"
    exc = httpx.ConnectError("handshake failed")
    exc.__cause__ = cause
    assert "answered in plain HTTP, not TLS" in transport_error(SERVER, exc).message


def test_a_peer_opens_only_after_its_pin_matches(tmp_path: Path) -> None:
    with tls_listener(tmp_path) as (port, received):
        address = parse_server(f"https://127.0.0.1:{port}")

        async def open_peer(fingerprint: str) -> str:
            peer = Peer(address, fingerprint, credentials=Credentials("mesh", "secret"))
            try:
                return await peer.open()
            finally:
                await peer.aclose()

        assert asyncio.run(open_peer(FP)) == FP
        with pytest.raises(TrustError):
            asyncio.run(open_peer(OTHER_FP))
    assert all(b"secret" not in data for data in received)


# --- following a change feed: the rules ---------------------------------------------------------------------


def test_resume_delivers_each_change_once_in_order() -> None:
    resume = sse.Resume(None)
    assert resume.on_event("open", "4", None) == sse.Opened(4, reconnected=False)
    assert resume.on_event("message", "5", {"id": 5}) == sse.Change(5, {"id": 5})
    assert resume.on_event("message", "5", {"id": 5}) is None  # a duplicate
    assert resume.on_event("message", "3", {"id": 3}) is None  # older than the last one delivered
    assert resume.on_event("message", None, {"id": 9}) is None  # no id: cannot be resumed after
    assert resume.on_event("message", "9", None) is None  # no body
    assert resume.on_event("open", "2", None) == sse.Opened(
        5, reconnected=True
    )  # the cursor only fills a gap
    assert resume.last_id == 5


def test_resume_follows_a_reset_and_ends_on_errors() -> None:
    resume = sse.Resume(10)
    assert resume.on_event("reset", None, {"message": "pruned", "resume_after": 2}) == sse.Reset("pruned")
    assert resume.last_id == 2
    assert resume.on_event("reset", None, {}) == sse.Reset("the server restarted the feed")
    assert resume.on_event("error", None, {"code": "shutting_down"}) == (
        "the server is shutting down; waiting for it to come back"
    )
    assert resume.on_event("error", None, {"error": "boom", "code": "x"}) == "the stream failed: boom"
    for code, status in (("not_found", 404), ("forbidden", 403)):
        with pytest.raises(RemoteError) as taken:
            resume.on_event("error", None, {"error": "gone", "code": code})
        assert (taken.value.http_status, taken.value.remote_code) == (status, code)


def test_resume_retries_only_once_connected_and_backs_off() -> None:
    resume = sse.Resume(None)
    dropped, broken, refused = (
        ConnectionFailedError("x"),
        RemoteError("y", status=503, code="z"),
        RemoteError("n", status=404, code="not_found"),
    )
    assert not resume.retryable(dropped)
    resume.on_event("open", None, None)
    assert resume.retryable(dropped)
    assert resume.retryable(broken)
    assert not resume.retryable(refused)
    assert [resume.retry("r").delay for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    resume.on_event("open", None, None)
    assert resume.retry("r") == sse.Retrying("r", 0.5)


Script = list[list[sse.FeedEvent] | Exception]


def scripted(
    script: Script, asked: list[int | None]
) -> Callable[[int | None], Generator[sse.FeedEvent, None, None]]:
    """A `connect` whose n-th stream yields the n-th list of events, or raises the n-th exception."""
    streams = iter(script)

    def connect(last: int | None) -> Generator[sse.FeedEvent, None, None]:
        asked.append(last)
        step = next(streams)
        if isinstance(step, Exception):
            raise step
        yield from step

    return connect


SCRIPT: Script = [
    [("open", "4", None), ("message", "5", {"n": 5})],  # ends: the server closed it
    ConnectionFailedError("lost the connection"),
    RemoteError("restarting", status=503, code="unavailable"),
    [
        ("open", None, None),
        ("message", "5", {"n": 5}),
        ("message", "6", {"n": 6}),
        ("error", None, {"code": "shutting_down"}),
    ],
    [("open", None, None), ("message", "7", {"n": 7})],
]
EXPECTED = [
    sse.Opened(4, reconnected=False),
    sse.Change(5, {"n": 5}),
    sse.Retrying(sse.CLOSED, 0.5),
    sse.Retrying("lost the connection", 1.0),
    sse.Retrying("restarting", 2.0),
    sse.Opened(5, reconnected=True),
    sse.Change(6, {"n": 6}),
    sse.Retrying("the server is shutting down; waiting for it to come back", 0.5),
    sse.Opened(6, reconnected=True),
    sse.Change(7, {"n": 7}),
]


def test_follow_resumes_after_the_last_change_across_every_kind_of_drop() -> None:
    asked: list[int | None] = []
    slept: list[float] = []
    feed = sse.follow(scripted(SCRIPT, asked), None, sleep=slept.append)
    assert [next(feed) for _ in EXPECTED] == EXPECTED
    assert asked == [None, 5, 5, 5, 6]
    assert slept == [0.5, 1.0, 2.0, 0.5]


def test_follow_async_applies_the_same_rules() -> None:
    asked: list[int | None] = []
    slept: list[float] = []
    connect = scripted(SCRIPT, asked)

    async def aconnect(last: int | None) -> AsyncGenerator[sse.FeedEvent, None]:
        for event in connect(last):
            yield event

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def take() -> list[sse.FeedItem]:
        feed = sse.follow_async(aconnect, None, sleep=sleep)
        try:
            return [await anext(feed) for _ in EXPECTED]
        finally:
            await feed.aclose()

    assert asyncio.run(take()) == EXPECTED
    assert asked == [None, 5, 5, 5, 6]
    assert slept == [0.5, 1.0, 2.0, 0.5]


@pytest.mark.parametrize(
    "first", [ConnectionFailedError("down"), RemoteError("no", status=503, code="x"), TrustError("changed")]
)
def test_follow_raises_when_the_first_connection_fails(first: Exception) -> None:
    with pytest.raises(type(first)):
        next(sse.follow(scripted([first], []), 3, sleep=lambda _: None))


def test_follow_raises_when_access_is_taken_back() -> None:
    script: Script = [
        [("open", "1", None), ("error", None, {"error": "no such session", "code": "not_found"})]
    ]
    feed = sse.follow(scripted(script, []), None, sleep=lambda _: None)
    assert next(feed) == sse.Opened(1, reconnected=False)
    with pytest.raises(RemoteError, match="no such session"):
        next(feed)


# --- both clients over a fake transport ---------------------------------------------------------------------


def stream_body(*events: tuple[str, str | None, Any]) -> bytes:
    lines = []
    for kind, event_id, data in events:
        lines.append(f"event: {kind}")
        if event_id is not None:
            lines.append(f"id: {event_id}")
        lines.append(f"data: {json.dumps(data)}\n")
    return ("\n".join(lines) + "\n").encode()


class FakeServer:
    """Answers /graph/stream with the next scripted answer and records the requests."""

    def __init__(self, answers: list[httpx.Response]) -> None:
        self.answers = iter(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return next(self.answers)


def sse_answer(*events: tuple[str, str | None, Any]) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream_body(*events))


FAST = 0.001  # the first back-off in the fake-transport tests (doubling)


def answers() -> list[httpx.Response]:
    """A stream that ends, a 503 while the server restarts, and a stream resumed after change 8."""
    return [
        sse_answer(("open", "7", None), ("message", "8", {"id": 8})),
        httpx.Response(503, json={"error": "restarting", "code": "unavailable"}),
        sse_answer(("open", "8", None), ("message", "8", {"id": 8}), ("message", "9", {"id": 9})),
    ]


FOLLOWED = [
    sse.Opened(7, reconnected=False),
    sse.Change(8, {"id": 8}),
    sse.Retrying(sse.CLOSED, FAST),
    sse.Retrying("restarting", 2 * FAST),
    sse.Opened(8, reconnected=True),
    sse.Change(9, {"id": 9}),
]


def test_the_cli_client_follows_a_feed_with_last_event_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sse, "BACKOFF_START", FAST)
    fake = FakeServer(answers())
    client = SpecaiClient(SERVER, DER, token="tok")
    client.http.close()
    client.http = httpx.Client(base_url=SERVER.origin, transport=httpx.MockTransport(fake))
    with client:
        feed = client.follow("research", since=None, idle_timeout=5)
        assert [next(feed) for _ in FOLLOWED] == FOLLOWED
        feed.close()
    assert [r.headers.get("last-event-id") for r in fake.requests] == [None, "8", "8"]
    assert {r.url.params["session_id"] for r in fake.requests} == {"research"}
    assert {r.headers["authorization"] for r in fake.requests} == {"Bearer tok"}


def test_a_peer_follows_a_feed_and_renews_a_refused_token(monkeypatch: pytest.MonkeyPatch) -> None:
    refused = httpx.Response(401, json={"error": "expired", "code": "unauthorized"})
    stream, restarting, resumed = answers()
    fake = FakeServer([stream, refused, restarting, resumed])
    issued: list[bool] = []

    async def tokens(refresh: bool) -> str:
        issued.append(refresh)
        return f"t{len(issued)}"

    monkeypatch.setattr(sse, "BACKOFF_START", FAST)

    async def take() -> list[sse.FeedItem]:
        peer = Peer(SERVER, FP, tokens=tokens)
        peer._http = httpx.AsyncClient(base_url=SERVER.origin, transport=httpx.MockTransport(fake))
        feed = peer.follow("research")
        try:
            return [await anext(feed) for _ in FOLLOWED]
        finally:
            await feed.aclose()
            await peer.aclose()

    assert asyncio.run(take()) == FOLLOWED
    assert issued == [False, False, True, False]  # the 401 got a fresh token, the 503 a reconnection
    assert [r.headers.get("last-event-id") for r in fake.requests] == [None, "8", "8", "8"]
    assert [r.headers["authorization"] for r in fake.requests] == [f"Bearer t{n}" for n in (1, 2, 3, 4)]


def test_the_cli_client_turns_error_bodies_into_remote_errors() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(401, json={"error": "token expired", "code": "unauthorized"})
        return httpx.Response(404, json={"error": "no session", "code": "not_found", "details": {"id": "s"}})

    client = SpecaiClient(SERVER, DER)
    client.http.close()
    client.http = httpx.Client(base_url=SERVER.origin, transport=httpx.MockTransport(answer))
    with client:
        with pytest.raises(RemoteError) as missing:
            client.session("s")
        assert (missing.value.remote_code, missing.value.details) == ("not_found", {"id": "s"})
        with pytest.raises(RemoteError, match=r"token expired; run `specai login`"):
            client.health()
        with pytest.raises(RemoteError, match="no session"):
            next(iter(client.stream("hi")))  # an error answer to a stream is an error body too


def test_answers_decode_into_the_servers_structs_and_a_drift_is_one_clear_error() -> None:
    health = {"status": "ok", "version": "1", "uptime_seconds": 3, "active_sessions": 0}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/health":
            return httpx.Response(200, json=health)
        if request.url.path == "/agents":
            return httpx.Response(200, json={"agents": [{"id": "a"}]})  # a server of another shape
        return httpx.Response(200, text="<html>not json</html>")

    client = SpecaiClient(SERVER, DER)
    client.http.close()
    client.http = httpx.Client(base_url=SERVER.origin, transport=httpx.MockTransport(answer))
    with client:
        assert client.health() == HealthOut("ok", "1", 3, 0)
        with pytest.raises(
            UnexpectedAnswerError, match=r"/agents answered with a body .*description"
        ) as drift:
            client.agents()
        assert drift.value.code == "unexpected_answer"
        assert isinstance(drift.value, ConnectionFailedError)
        with pytest.raises(UnexpectedAnswerError, match="not JSON"):
            client.sessions()


def test_a_query_sends_system_temperature_and_max_tokens_only_when_given() -> None:
    sent: list[Any] = []
    answer = {
        "response": "ok",
        "session_id": "s",
        "agent": "default",
        "metadata": {"timestamp": "t", "model": "m", "processing_time_ms": 1, "run_id": "r"},
    }

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        if request.url.path == "/stream":
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"data: {}\n\n")
        return httpx.Response(200, json=answer)

    client = SpecaiClient(SERVER, DER)
    client.http.close()
    client.http = httpx.Client(base_url=SERVER.origin, transport=httpx.MockTransport(record))
    with client:
        client.query("hi")
        client.query("hi", system="Be brief.", temperature=0.0, max_tokens=5, session_id="s", agent="a")
        list(client.stream("hi", system="Be brief.", max_tokens=7))
    assert sent == [
        {"message": "hi"},
        {
            "message": "hi",
            "session_id": "s",
            "agent": "a",
            "temperature": 0.0,
            "max_tokens": 5,
            "system": "Be brief.",
        },
        {"message": "hi", "max_tokens": 7, "system": "Be brief."},
    ]


def test_a_request_body_sends_only_what_the_caller_chose() -> None:
    assert body_of(EdgeIn("s", 1, 2, "USES")) == {
        "session_id": "s",
        "source_id": 1,
        "target_id": 2,
        "edge_type": "USES",
    }
    assert body_of(EdgeIn("s", 1, 2, "USES", weight=0.5))["weight"] == 0.5
    assert body_of(KeyIn("ci", expires_days=None)) == {"name": "ci", "expires_days": None}  # never expires
    assert body_of(BootstrapIn()) == {}
    assert body_of(SendIn({"Custom": "ping"}, [1])) == {"message_type": {"Custom": "ping"}, "payload": [1]}


def test_an_event_whose_data_is_not_json_is_a_broken_stream() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"id: 1\ndata: {oops\n\n"
        )

    client = SpecaiClient(SERVER, DER)
    client.http.close()
    client.http = httpx.Client(base_url=SERVER.origin, transport=httpx.MockTransport(answer))
    with client, pytest.raises(ConnectionFailedError, match="not JSON"):
        next(client.watch("s"))


# --- the CLI's start-up ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", Commands.lazy, ids=lambda e: e.name)
def test_each_lazy_command_lists_the_summary_its_own_help_starts_with(entry: Any) -> None:
    command = entry.load(None, None, True)
    assert command.name == entry.name
    assert (command.help or "").split("\n\n")[0] == entry.summary


@pytest.mark.live
def test_listing_the_commands_imports_none_of_them() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from specai.cli import app; "
        "result = CliRunner().invoke(app, ['--help']); assert 'mesh' in result.output, result.output; "
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('specai.cli.'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert loaded == ["specai.cli._lazy"]


HEAVY = {"httpx", "cryptography", "pydantic", "sqlalchemy", "argon2", "jwt", "specai.server", "specai.client"}
PROBE = """
import sys
from specai.cli import main
sys.argv = ["specai", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
print("LOADED:", *sorted({m if m.startswith("specai.") else m.split(".")[0] for m in sys.modules}))
"""


@pytest.mark.live
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["cert", "fingerprint"]], ids=" ".join)
def test_the_fast_commands_load_no_heavy_library(tmp_path: Path, args: list[str]) -> None:
    home = tmp_path / "home"
    (home / "tls").mkdir(parents=True)
    (home / "tls" / "server.crt").write_bytes(CERT_PEM)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECAI_")} | {"SPECAI_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    *printed, loaded = done.stdout.strip().splitlines()
    modules = set(loaded.removeprefix("LOADED:").split())
    assert not {m for m in modules if m in HEAVY or m.startswith(("specai.server.", "specai.client."))}
    if args == ["cert", "fingerprint"]:
        assert printed == [FP]


@pytest.mark.parametrize("limit", ["abc", "0"])
def test_an_option_value_is_still_checked_by_typer(limit: str) -> None:
    result = CliRunner().invoke(app, ["graph", "nodes", "--limit", limit])
    assert result.exit_code == 2
    assert "Invalid value for '--limit'" in result.output


# --- the quick certificate fingerprint ----------------------------------------------------------------------


def _variants() -> Iterator[tuple[str, bytes]]:
    other, _ = create_self_signed("other")
    yield "plain", CERT_PEM
    yield "text before", b"subject=CN=me\n" + CERT_PEM
    yield "chain", CERT_PEM + other
    yield "crlf", CERT_PEM.replace(b"\n", b"\r\n")
    yield "key first", KEY_PEM + CERT_PEM
    yield "x509 label", CERT_PEM.replace(b"CERTIFICATE", b"X509 CERTIFICATE")


def test_the_quick_fingerprint_agrees_with_cryptography_or_defers(tmp_path: Path) -> None:
    for name, data in _variants():
        path = tmp_path / f"{name}.pem"
        path.write_bytes(data)
        quick = _pem_fingerprint(path)
        assert quick in (None, read_cert(path).fingerprint), name
    assert _pem_fingerprint(tmp_path / "plain.pem") == FP


@pytest.mark.parametrize(
    "damage",
    [
        lambda pem: pem[:-40],  # cut short
        lambda pem: pem.replace(b"MII", b"MIJ", 1),  # the outer length is wrong
        lambda pem: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        lambda pem: b"not a certificate at all",
    ],
)
def test_a_damaged_certificate_is_left_to_cryptography(
    tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(damage(CERT_PEM))
    assert _pem_fingerprint(path) is None
    with pytest.raises(TlsError):
        read_cert(path)
