"""Running an agent to its end, for the routes that answer with the whole reply (`/query`, chat completions)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from specai.agents.runtime import Run
from specai.errors import ExecutionError, SpecaiError

Receive = Callable[[], Awaitable[Any]]


class ClientGoneError(SpecaiError):
    """The client went away before the answer was ready; the answer (nginx's 499) reaches nobody."""

    code = "client_closed_request"
    status = 499


async def finish(run: Run, receive: Receive | None = None) -> tuple[str, dict[str, Any]]:
    """Run to the end with non-streaming model calls; return the text and metadata, or raise the run's failure
    (502/504/500).

    With the request's ASGI `receive` (its body already read), a client that goes away cancels the run and its
    upstream call (ClientGoneError then ends the request, quietly).
    """
    if receive is None:
        return await _finish(run)
    task = asyncio.current_task()
    assert task is not None
    gone = over = False

    def cancel_if_gone(watch: asyncio.Future[None]) -> None:
        nonlocal gone
        # (a callback already scheduled still runs after `over`; a receive that failed watches nothing)
        if not over and not watch.cancelled() and watch.exception() is None:
            gone = True
            task.cancel()

    watch = asyncio.ensure_future(_disconnect(receive))
    watch.add_done_callback(cancel_if_gone)
    try:
        return await _finish(run)  # cancelled, the SDK closes the upstream request
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
        raise ClientGoneError("the client went away before the answer was ready") from None
    finally:
        over = True
        watch.cancel()


async def _disconnect(receive: Receive) -> None:
    """Return when the client has gone away."""
    while (await receive()).get("type") != "http.disconnect":
        pass


async def _finish(run: Run) -> tuple[str, dict[str, Any]]:
    parts: list[str] = []
    metadata: dict[str, Any] = {}
    async for event in run.events(stream=False):
        if event.type == "chunk":
            parts.append(event.data["text"])
        elif event.type == "end":
            metadata = event.data["metadata"]
    if run.failure is not None:
        raise run.failure
    if not metadata:
        raise ExecutionError("the agent ended without an answer")
    return "".join(parts), metadata
