"""Server-sent events for every client: read one stream, and follow a change feed across reconnections.

`Resume` holds the rules (where to resume, which events are new, when reconnecting can help, how long to wait) and
knows no I/O, so the blocking `follow` and the asyncio `follow_async` below apply exactly the same ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse, connect_sse

from specai.client.errors import response_error, transport_error
from specai.errors import ConnectionFailedError, RemoteError
from specai.identity.trust import ServerAddress

BACKOFF_START = 0.5  # seconds before the first reconnection attempt; doubles up to BACKOFF_MAX
BACKOFF_MAX = 5.0

FeedEvent = tuple[str, str | None, Any]  # (event type, id, data) of one change-stream event
ErrorOf = Callable[[httpx.Response], RemoteError]


# --- one stream ---------------------------------------------------------------------------------------------------


def iter_events(
    http: httpx.Client,
    server: ServerAddress,
    method: str,
    path: str,
    *,
    error: ErrorOf = response_error,
    **options: Any,
) -> Generator[ServerSentEvent, None, None]:
    """The events of one request; an error answer raises `error(response)`, a transport failure
    ConnectionFailedError (TrustError for a changed certificate)."""
    try:
        with connect_sse(http, method, path, **options) as source:
            if source.response.status_code != 200:
                source.response.read()
                raise error(source.response)
            yield from source.iter_sse()  # checks the content type is text/event-stream
    except SSEError as exc:
        raise ConnectionFailedError(f"the server did not answer with an event stream: {exc}") from None
    except httpx.HTTPError as exc:
        raise transport_error(server, exc) from None


async def aiter_events(
    http: httpx.AsyncClient,
    server: ServerAddress,
    method: str,
    path: str,
    *,
    error: ErrorOf = response_error,
    **options: Any,
) -> AsyncGenerator[ServerSentEvent, None]:
    """`iter_events` on an event loop."""
    try:
        async with aconnect_sse(http, method, path, **options) as source:
            if source.response.status_code != 200:
                await source.response.aread()
                raise error(source.response)
            async for event in source.aiter_sse():
                yield event
    except SSEError as exc:
        raise ConnectionFailedError(f"the server did not answer with an event stream: {exc}") from None
    except httpx.HTTPError as exc:
        raise transport_error(server, exc) from None


def change_stream(
    session_id: str, last_event_id: str | int | None, since: int | None
) -> tuple[str, dict[str, str]]:
    """Path and headers of `GET /graph/stream` for a session, resuming after `last_event_id` (Last-Event-ID)."""
    query = {"session_id": session_id, **({} if since is None else {"since": str(since)})}
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    return f"/graph/stream?{urlencode(query)}", headers


def change_event(event: ServerSentEvent) -> FeedEvent:
    """`(type, id, data)` of one change-stream event; `open` carries the id the stream starts after."""
    kind = event.event or "message"
    try:
        data = json.loads(event.data) if event.data else None
    except ValueError:
        raise ConnectionFailedError(
            f"the server did not answer with an event stream: an event's data is not JSON: {event.data[:80]!r}"
        ) from None
    if kind == "open":
        return kind, event.id or None, None
    return kind, (event.id or None) if kind == "message" else None, data


# --- following a change feed --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """The server accepted a stream that resumes after change `after` (None: from now)."""

    after: int | None
    reconnected: bool


@dataclass(frozen=True)
class Change:
    """A change not seen before, in changelog order."""

    id: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Reset:
    """The server restarted the feed (its changelog was pruned past the resume point)."""

    message: str


@dataclass(frozen=True)
class Retrying:
    """The stream ended for `reason`; the next connection is attempted in `delay` seconds."""

    reason: str
    delay: float


FeedItem = Opened | Change | Reset | Retrying


class Resume:
    """The state of a followed feed across connections: the last change delivered, whether it ever connected,
    and the back-off. A change is delivered at most once, in order, whatever the server sends."""

    def __init__(self, since: int | None) -> None:
        self.last_id = since
        self.connected = False
        self.delay = BACKOFF_START

    def on_event(self, kind: str, event_id: str | None, data: Any) -> FeedItem | str | None:
        """What one event means: an item to deliver, a reason to end this connection, or nothing."""
        body = data if isinstance(data, dict) else {}
        if kind == "open":
            if self.last_id is None and event_id is not None:
                self.last_id = int(event_id)
            opened = Opened(self.last_id, reconnected=self.connected)
            self.connected, self.delay = True, BACKOFF_START
            return opened
        if kind == "message" and event_id is not None and body:
            change_id = int(event_id)
            if self.last_id is None or change_id > self.last_id:
                self.last_id = change_id
                return Change(change_id, body)
        elif kind == "reset":
            if isinstance(body.get("resume_after"), int):
                self.last_id = body["resume_after"]
            return Reset(str(body.get("message", "the server restarted the feed")))
        elif kind == "error":
            return self._ended_by(body)
        return None

    def _ended_by(self, body: dict[str, Any]) -> str:
        code = body.get("code")
        if code == "shutting_down":
            return "the server is shutting down; waiting for it to come back"
        if code in ("not_found", "forbidden"):  # access was taken back: reconnecting cannot help
            raise RemoteError(
                str(body.get("error")), status=404 if code == "not_found" else 403, code=str(code)
            )
        return f"the stream failed: {body.get('error', 'unknown error')}"

    def retryable(self, exc: ConnectionFailedError | RemoteError) -> bool:
        """Reconnect after a lost connection or a server error, but only once a stream was ever accepted."""
        if isinstance(exc, RemoteError):
            return self.connected and exc.http_status >= 500
        return self.connected

    def retry(self, reason: str) -> Retrying:
        """The wait before the next attempt (0.5 s, doubling up to 5 s; reset by every accepted stream)."""
        item = Retrying(reason, self.delay)
        self.delay = min(self.delay * 2, BACKOFF_MAX)
        return item


CLOSED = "the server closed the stream"


def follow(
    connect: Callable[[int | None], Generator[FeedEvent, None, None]],
    since: int | None,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Generator[FeedItem, None, None]:
    """Follow a change feed forever: `connect(last_id)` opens one stream (sent as Last-Event-ID); every drop is
    followed by a reconnection that resumes after the last change delivered. Errors that reconnecting cannot
    mend (never connected, refused, access taken back, an untrusted certificate) are raised."""
    resume = Resume(since)
    while True:
        reason = CLOSED
        try:
            with contextlib.closing(connect(resume.last_id)) as events:
                for kind, event_id, data in events:
                    step = resume.on_event(kind, event_id, data)
                    if isinstance(step, str):
                        reason = step
                        break
                    if step is not None:
                        yield step
        except (ConnectionFailedError, RemoteError) as exc:
            if not resume.retryable(exc):
                raise
            reason = exc.message
        wait = resume.retry(reason)
        yield wait
        sleep(wait.delay)


async def follow_async(
    connect: Callable[[int | None], AsyncGenerator[FeedEvent, None]],
    since: int | None,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncGenerator[FeedItem, None]:
    """`follow` on an event loop."""
    resume = Resume(since)
    while True:
        reason = CLOSED
        try:
            async with contextlib.aclosing(connect(resume.last_id)) as events:
                async for kind, event_id, data in events:
                    step = resume.on_event(kind, event_id, data)
                    if isinstance(step, str):
                        reason = step
                        break
                    if step is not None:
                        yield step
        except (ConnectionFailedError, RemoteError) as exc:
            if not resume.retryable(exc):
                raise
            reason = exc.message
        wait = resume.retry(reason)
        yield wait
        await sleep(wait.delay)
