"""Relaying an event source to an SSE response: keep-alives in silences, one last word on shutdown, clean cancel.

Every stream (`/stream`, `/v1/chat/completions`, `/graph/stream`) ends the same way when the server stops: one
event built by `shutting_down`, message "server is shutting down" and code `shutting_down`, written in the error
envelope that stream already uses for its other errors (an agent `error` event, an OpenAI error object, the
`{"error", "code"}` body), so a client that handles a stream's errors handles shutdown too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, Operation, Reference
from litestar.response import ServerSentEvent, ServerSentEventMessage, Stream

from specai.server.schemas.streams import StreamEvent

EVENT_STREAM = "text/event-stream"
KEEPALIVE = object()  # marker yielded by `relay` during long silences
STOPPING = object()  # marker yielded by `relay`, last, when the server shuts down
SHUTTING_DOWN = "shutting_down"
SHUTDOWN_MESSAGE = "server is shutting down"


def error_body(message: str, code: str) -> dict[str, Any]:
    """The server's error shape, `{"error", "code"}`, as the data of an SSE `error` event."""
    return {"error": message, "code": code}


def shutting_down(
    envelope: Callable[[str, str], Any] = error_body, *, event: str | None = None, event_id: str | None = None
) -> ServerSentEventMessage:
    """The one last event of every stream the server stops; `envelope(message, code)` is that stream's error."""
    return ServerSentEventMessage(
        data=json.dumps(envelope(SHUTDOWN_MESSAGE, SHUTTING_DOWN)), event=event, id=event_id
    )


def keepalive_comment() -> ServerSentEventMessage:
    """A comment line that keeps proxies and clients from timing out a silent stream."""
    return ServerSentEventMessage(comment="keep-alive", data=None)


# Frames encoded as Litestar's ServerSentEventMessage.encode would, for streams that write bytes themselves.
KEEPALIVE_FRAME = b": keep-alive\r\n\r\n"


def frame(data: str, event_id: str | int | None = None) -> bytes:
    """One SSE event of one `data:` line (`data` holds no line break, as JSON text never does), maybe with an id."""
    if event_id is None:
        return f"data: {data}\r\n\r\n".encode()
    return f"id: {event_id}\r\ndata: {data}\r\n\r\n".encode()


class EventStream(ServerSentEvent):
    """A ServerSentEvent over frames already encoded (bytes): no message object and encoder per event, and no hop
    to a worker thread before the first one (Litestar's iterator fetches its header lines with sync_to_thread)."""

    def __init__(self, frames: AsyncIterator[bytes]) -> None:
        Stream.__init__(self, content=frames, media_type=EVENT_STREAM)
        # the headers ServerSentEvent sets
        self.headers.setdefault("Cache-Control", "no-cache")
        self.headers["Connection"] = "keep-alive"
        self.headers["X-Accel-Buffering"] = "no"


def event_stream_response(description: str) -> dict[int, ResponseSpec]:
    """The OpenAPI 200 of a handler that answers with server-sent events (Litestar would call it JSON)."""
    spec = ResponseSpec(
        StreamEvent, description=description, media_type=EVENT_STREAM, generate_examples=False
    )
    return {200: spec}


@dataclass
class JsonOrEventStream(Operation):
    """An operation whose 200 is JSON, or server-sent events when the request sets `stream` (the OpenAI API)."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse) and ok.content is not None:
            # the schema the other streams register (tests/test_openapi.py checks every reference resolves)
            event = Reference(ref=f"#/components/schemas/{StreamEvent.__name__}")
            ok.content[EVENT_STREAM] = OpenAPIMediaType(schema=event)


async def relay(events: AsyncIterator[Any], stopping: asyncio.Event, keepalive: float) -> AsyncIterator[Any]:
    """Relay events; yield KEEPALIVE after `keepalive` s of silence; on shutdown end with STOPPING.

    Closing this generator (the client went away) cancels the producer, which closes the upstream request.
    """
    async with contextlib.aclosing(relay_batches(events, stopping, keepalive)) as batches:
        async for batch in batches:
            for item in batch:
                yield item


async def relay_batches(
    events: AsyncIterator[Any], stopping: asyncio.Event, keepalive: float
) -> AsyncGenerator[list[Any], None]:
    """`relay`, but each time every item already waiting, in order: a consumer that fell behind (a full socket,
    a busy loop) writes them in one go instead of one send per event.

    One producer task per stream feeds a queue, so relaying an event costs no new task, and one timer per silence
    (not a timeout per event) adds the keep-alives. Closing this generator cancels the producer.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    pulse = _Pulse(queue, keepalive)
    producer = asyncio.ensure_future(_produce(events, queue, pulse))
    stop = asyncio.ensure_future(stopping.wait())
    stop.add_done_callback(lambda _: queue.put_nowait(STOPPING))
    try:
        while True:
            waiting = [await queue.get()]
            while not queue.empty():
                waiting.append(queue.get_nowait())
            batch: list[Any] = []
            for item in waiting:
                if item is _DONE:
                    if batch:
                        yield batch
                    return
                if item is STOPPING:
                    batch.append(STOPPING)
                    yield batch
                    return
                if isinstance(item, _Failure):
                    if batch:
                        yield batch
                    raise item.error
                batch.append(item)
            yield batch
    finally:
        pulse.cancel()
        stop.cancel()
        producer.cancel()
        # Shielded: a cancellation arriving now must not interrupt the producer's cleanup, or the SDK's
        # connection is left open and the upstream keeps generating.
        with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
            await producer


class _Pulse:
    """Queues a KEEPALIVE once `keepalive` s pass without an event: one timer, moved on only when it fires."""

    def __init__(self, queue: asyncio.Queue[Any], keepalive: float) -> None:
        self._queue = queue
        self._keepalive = keepalive
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()  # when the producer last queued an event
        self._timer = self._loop.call_at(self.last + keepalive, self._fire)

    def _fire(self) -> None:
        now = self._loop.time()
        due = self.last + self._keepalive
        if now >= due - _CLOCK_SLACK:
            self._queue.put_nowait(KEEPALIVE)
            self.last = now
            due = now + self._keepalive
        self._timer = self._loop.call_at(due, self._fire)

    def cancel(self) -> None:
        self._timer.cancel()


# the event loop may run a timer up to its clock resolution early
_CLOCK_SLACK = 0.001


class _Failure:
    """An exception raised by the event source, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()


async def _produce(events: AsyncIterator[Any], queue: asyncio.Queue[Any], pulse: _Pulse) -> None:
    loop = asyncio.get_running_loop()
    try:
        async for event in events:
            queue.put_nowait(event)
            pulse.last = loop.time()
    except Exception as exc:  # a bug below: re-raised in the consumer, where the response can report it
        queue.put_nowait(_Failure(exc))
    else:
        queue.put_nowait(_DONE)
