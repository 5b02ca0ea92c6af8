"""Silent and idle TLS connections against a real server: closed after `idle_timeout_secs`, never starving /health."""

from __future__ import annotations

import contextlib
import resource
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import ServerProcess, parse_sse

pytestmark = pytest.mark.live

SILENT = 1500  # more than granian's old default backpressure (1,024), which a silent flood used to fill


def _context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = (
        ssl.CERT_NONE
    )  # these sockets only occupy the server; the real client below pins the cert
    return ctx


def _open_tls(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))


def _seconds_until_closed(sock: ssl.SSLSocket, limit: float) -> float:
    """How long until the server closes `sock` (EOF or reset); fails if it is still open after `limit` s."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        data = sock.recv(100)
    except TimeoutError:
        pytest.fail(f"the server kept a silent connection open for more than {limit} s")
    except (ConnectionResetError, ssl.SSLError):
        data = b""
    assert data == b"", data
    return time.monotonic() - started


def _is_open(sock: ssl.SSLSocket) -> bool:
    sock.setblocking(False)
    try:
        return bool(sock.recv(1)) or False
    except ssl.SSLWantReadError:
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose idle timeout is 2 s; the mock model streams a word every 0.4 s (9 words: 3.6 s)."""
    home = tmp_path_factory.mktemp("idle")
    (home / "spec-ai.config.toml").write_text(
        "[server]\nidle_timeout_secs = 2\n[model]\nmock_delay_ms = 400\n"
    )
    proc = ServerProcess(home).start()
    yield proc
    proc.stop()


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(idle_server: ServerProcess) -> None:
    with _open_tls(idle_server.port, _context()) as sock:
        waited = _seconds_until_closed(sock, limit=4.5)
    assert 1.5 <= waited <= 3.5, waited


def test_a_half_sent_request_is_closed_after_the_idle_timeout(idle_server: ServerProcess) -> None:
    with _open_tls(idle_server.port, _context()) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the headers never end (slowloris)
        waited = _seconds_until_closed(sock, limit=4.5)
    assert waited <= 3.5, waited


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(idle_server: ServerProcess) -> None:
    with _open_tls(idle_server.port, _context()) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        waited = _seconds_until_closed(sock, limit=4.5)
    assert 1.5 <= waited <= 3.5, waited


def test_a_stream_longer_than_the_idle_timeout_is_not_cut(idle_server: ServerProcess) -> None:
    """The timeout covers waiting for a request, not a response in progress."""
    with idle_server.client() as client, client.stream("POST", "/stream", json={"message": "hi"}) as response:
        assert response.status_code == 200
        started = time.monotonic()
        body = "".join(response.iter_text())
    took = time.monotonic() - started
    assert took >= 2.5, took  # longer than the idle timeout ...
    assert [event.data["type"] for event in parse_sse(body)][-1] == "end", body  # ... and complete


@contextlib.contextmanager
def _file_limit(wanted: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_health_answers_within_1_s_with_1500_silent_tls_connections_open(home: Path) -> None:
    """Default settings (idle timeout 10 s): the silent flood is all open while a real client is served."""
    proc = ServerProcess(home).start()
    ctx = _context()
    silent: list[ssl.SSLSocket] = []
    try:
        with _file_limit(SILENT + 512), proc.client() as client:
            started = time.monotonic()
            for _ in range(SILENT):
                silent.append(_open_tls(proc.port, ctx))
            opened_in = time.monotonic() - started
            assert opened_in < 9, f"opening took {opened_in:.1f} s, close to the idle timeout"
            before = time.monotonic()
            response = client.get("/health", timeout=5)
            took = time.monotonic() - before
            assert response.status_code == 200, response.text
            assert took < 1.0, f"/health took {took:.2f} s with {SILENT} silent connections open"
            still_open = sum(_is_open(sock) for sock in silent[-100:])
            assert still_open == 100, f"only {still_open} of the last 100 silent connections are open"
    finally:
        for sock in silent:
            sock.close()
        proc.stop()


def test_health_answers_within_1_s_with_1500_tcp_connections_that_never_start_tls(home: Path) -> None:
    """Before the handshake: granian handshakes concurrently and drops one that never completes after 10 s."""
    proc = ServerProcess(home).start()
    raw: list[socket.socket] = []
    try:
        with _file_limit(SILENT + 512), proc.client() as client:
            for _ in range(SILENT):
                raw.append(socket.create_connection(("127.0.0.1", proc.port), timeout=5))
            before = time.monotonic()
            response = client.get("/health", timeout=5)
            took = time.monotonic() - before
            assert response.status_code == 200, response.text
            assert took < 1.0, f"/health took {took:.2f} s with {SILENT} connections before TLS open"
    finally:
        for sock in raw:
            sock.close()
        proc.stop()
