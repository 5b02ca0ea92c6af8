"""Run the app under granian (embedded, in this process) over TLS; the only module that imports granian."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import secrets
import signal
import ssl
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from granian.constants import HTTPModes, Interfaces, SSLProtocols
from granian.http import HTTP1Settings
from granian.log import LogLevels
from granian.server.embed import Server
from litestar import Litestar

from specai.config import ServerSettings
from specai.errors import SpecaiError, StartupError
from specai.identity.tls import CertPaths
from specai.server.lifespan import Lifespan
from specai.server.state import ServerState

GRACE_SECONDS = 2.0  # in-flight requests get this long to finish after SIGINT/SIGTERM
HARD_EXIT_SECONDS = 4.5  # after this the process exits whatever is still running
READY_TIMEOUT = 15.0
MAX_LISTEN_BACKLOG = 4096  # the kernel's usual somaxconn; a longer queue would be truncated anyway
SPARE_FILES = 256  # descriptors kept free beyond the connection cap (database, certificates, logs)
PROBE_HEADER = b"x-specai-ready-probe"


class RequestTracker:
    """ASGI wrapper that knows the in-flight request tasks so shutdown can cancel stragglers cleanly.

    It also sees what the runner needs to know at start: whether the app's start-up (the lifespan) failed and
    why, and whether a readiness probe of this process (carrying `probe` in PROBE_HEADER) reached it.
    """

    def __init__(self, app: Litestar) -> None:
        self.app = app
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False
        self.startup_error: BaseException | None = None
        self.probe: bytes | None = secrets.token_hex(16).encode()  # None once this process answered one
        self.probed = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # not a request: shutdown must not cancel it
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if self.probe is not None and (PROBE_HEADER, self.probe) in list(scope.get("headers", ())):
            self.probed.set()
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self.closing:
                raise
            with contextlib.suppress(Exception):  # fails harmlessly when the response had already started
                await _send_shutdown_error(send)
        finally:
            self.tasks.discard(task)

    def _lifespan_send(self, send: Any) -> Any:
        """Note why start-up failed; for one of ours, tell granian no traceback (the runner reports one line)."""

        async def noting(message: Any) -> None:
            if message.get("type") == "lifespan.startup.failed":
                failed = sys.exc_info()[1]  # Litestar reports the failure from inside its `except`
                self.startup_error = _specai_error(failed) or failed
                if isinstance(self.startup_error, SpecaiError):
                    message = {**message, "message": ""}
            await send(message)

        return noting

    def cancel_all(self) -> None:
        self.closing = True
        for task in list(self.tasks):
            task.cancel()


async def _send_shutdown_error(send: Any) -> None:
    body = b'{"error":"server is shutting down","code":"shutting_down"}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _QuietGranian(logging.Filter):
    """Drop granian's "experimental" notice, and its traceback of a start-up failure the runner reports itself."""

    def __init__(self, tracker: RequestTracker) -> None:
        super().__init__()
        self.tracker = tracker

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "experimental" in message:
            return False
        reported = isinstance(self.tracker.startup_error, SpecaiError)
        return not (reported and ("lifespan startup failed" in message or "Unexpected exit" in message))


def serve(
    app: Litestar,
    host: str,
    port: int,
    cert: CertPaths,
    on_ready: Callable[[str], None],
    announce: Callable[[str], None] = print,
) -> None:
    """Serve until SIGINT/SIGTERM; call `on_ready(url)` once `/health` answers over TLS.

    `announce` is how background work (the mesh link) tells the operator something.
    """
    asyncio.run(_serve(app, host, port, cert, on_ready, announce))


async def _serve(
    app: Litestar,
    host: str,
    port: int,
    cert: CertPaths,
    on_ready: Callable[[str], None],
    announce: Callable[[str], None],
) -> None:
    state: ServerState = app.state.specai
    lifespan: Lifespan = app.state.lifespan
    tracker = RequestTracker(app)
    server = Server(tracker, **granian_options(state.settings.server, host, port, cert))
    logging.getLogger("_granian").addFilter(_QuietGranian(tracker))
    for noisy in ("httpx", "httpx2"):  # the vendor SDKs log every upstream request at INFO
        logging.getLogger(noisy).setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    stopping = False

    def request_stop() -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        state.stopping.set()  # open streams finish with a final event
        watchdog = threading.Timer(HARD_EXIT_SECONDS, os._exit, args=(0,))
        watchdog.daemon = True
        watchdog.start()
        loop.call_later(GRACE_SECONDS, tracker.cancel_all)
        loop.call_later(0.2, server.stop)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, request_stop)
    serving = asyncio.ensure_future(server.serve())
    url = _url(host, port)
    try:
        await _wait_ready(url, cert, serving, tracker)
    except BaseException:
        if not serving.done():
            server.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(serving, 3)
        raise
    on_ready(url)
    lifespan.serving(announce, request_stop)
    try:
        await serving
    except (TimeoutError, asyncio.CancelledError):
        pass  # granian gave up on a worker that would not stop; we are exiting anyway
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    if lifespan.fatal is not None:
        raise lifespan.fatal


def granian_options(server: ServerSettings, host: str, port: int, cert: CertPaths) -> dict[str, Any]:
    """granian's settings: HTTP/1.1 only, so its header read timeout also closes silent and idle connections.

    In granian's `auto` mode hyper-util first waits, without any timer, for the bytes that tell HTTP/1 from
    HTTP/2, so a connection that completes TLS and sends nothing is held forever (measured with granian
    2.8.9: still open after 40 s, and 1,024 of them filled the default backpressure so /health timed out).
    With `http1` the timeout runs from the moment the connection is served and again between keep-alive
    requests, so idle and half-sent requests are closed after `idle_timeout_secs`. `backpressure` caps the
    connections served at once; a TLS handshake that never completes is dropped after 10 s by granian.
    """
    cap = server.max_connections
    _raise_file_limit(cap + SPARE_FILES)
    return {
        "address": host,
        "port": port,
        "interface": Interfaces.ASGI,
        "http": HTTPModes.http1,
        "http1_settings": HTTP1Settings(header_read_timeout=max(1, round(server.idle_timeout_secs * 1000))),
        "ssl_cert": Path(cert.cert),
        "ssl_key": Path(cert.key),
        "ssl_protocol_min": SSLProtocols.tls12,
        "log_level": LogLevels.warning,
        "backlog": min(cap, MAX_LISTEN_BACKLOG),
        "backpressure": cap,
    }


def _raise_file_limit(wanted: int) -> None:
    """Raise the soft open-files limit so `max_connections` sockets can be accepted (never above the hard one)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < wanted:
        logging.getLogger("specai.server").warning(
            "open-files limit %d is below max_connections + %d; connections beyond it are refused",
            soft,
            SPARE_FILES,
        )


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    return f"https://[{shown}]:{port}" if ":" in shown else f"https://{shown}:{port}"


async def _wait_ready(
    url: str, cert: CertPaths, serving: asyncio.Future[Any], tracker: RequestTracker
) -> None:
    """Until `/health` answers over TLS from this process.

    Worker processes share the port (SO_REUSEPORT), so a sibling may answer a probe: each probe opens a new
    connection, which the kernel may hand to another socket, and only one that reached this process counts.
    """
    ctx = ssl.create_default_context(cafile=str(cert.cert))
    ctx.check_hostname = False
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
    assert tracker.probe is not None
    headers = {PROBE_HEADER.decode(): tracker.probe.decode()}
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(verify=ctx, timeout=2.0, limits=fresh, headers=headers) as client:
        while True:
            if serving.done():
                raise StartupError(_startup_failure(serving, tracker))
            try:
                response = await client.get(f"{url}/health")
                if response.status_code == 200 and tracker.probed.is_set():
                    tracker.probe = None
                    return
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise StartupError(f"the server did not answer on {url}/health within {READY_TIMEOUT:.0f} s")
            await asyncio.sleep(0.05)


def _specai_error(exc: BaseException | None) -> SpecaiError | None:
    """The SpecaiError `exc` is or holds (Litestar raises start-up hook errors inside an exception group)."""
    if isinstance(exc, SpecaiError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _specai_error(inner)) is not None:
                return found
    return None


def _startup_failure(serving: asyncio.Future[Any], tracker: RequestTracker) -> str:
    """Why the server stopped before it answered: the app's own start-up error when it had one."""
    failed = tracker.startup_error
    if isinstance(failed, SpecaiError):
        return failed.message
    reason = failed or serving.exception()
    return f"the server stopped during start-up: {reason or 'no reason given'}"
