"""Relaying an event source to an SSE response: keep-alives in silences, a last word on shutdown, clean cancel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio

KEEPALIVE = object()  # marker yielded by `relay` during long silences


async def relay(
    events: AsyncIterator[Any], stopping: asyncio.Event, keepalive: float, farewell: Any
) -> AsyncIterator[Any]:
    """Relay events; yield KEEPALIVE after `keepalive` s of silence; on shutdown end with `farewell`.

    One producer task per stream feeds a queue, so relaying an event costs no new task. Closing this generator
    (the client went away) cancels the producer, which closes the upstream request.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue()
    producer = asyncio.ensure_future(_produce(events, queue))
    stop = asyncio.ensure_future(stopping.wait())
    stop.add_done_callback(lambda _: queue.put_nowait(_STOPPING))
    try:
        while True:
            try:
                async with asyncio.timeout(keepalive):
                    item = await queue.get()
            except TimeoutError:
                yield KEEPALIVE
                continue
            if item is _DONE:
                return
            if item is _STOPPING:
                yield farewell
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.cancel()
        producer.cancel()
        # Shielded: a cancellation arriving now must not interrupt the producer's cleanup, or the SDK's
        # connection is left open and the upstream keeps generating.
        with anyio.CancelScope(shield=True), contextlib.suppress(asyncio.CancelledError):
            await producer


class _Failure:
    """An exception raised by the event source, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_DONE = object()
_STOPPING = object()


async def _produce(events: AsyncIterator[Any], queue: asyncio.Queue[Any]) -> None:
    try:
        async for event in events:
            queue.put_nowait(event)
    except Exception as exc:  # a bug below: re-raised in the consumer, where the response can report it
        queue.put_nowait(_Failure(exc))
    else:
        queue.put_nowait(_DONE)
