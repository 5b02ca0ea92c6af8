"""List agents and query them, whole (`/query`) or streamed as server-sent events (`/stream`)."""

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from litestar import get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody
from litestar.response import ServerSentEvent, ServerSentEventMessage

from specai.agents import AgentEvent, AgentRuntime, QueryInput, Run
from specai.errors import ExecutionError, InvalidRequestError
from specai.server.schemas import AgentListOut, AgentOut, QueryIn, QueryOut, ResponseMetadata
from specai.server.state import ServerState


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/agents`, `/query` and `/stream`, bound to this server's state."""
    agents_out = agent_list(server.runtime)  # agents are fixed for the server's lifetime

    @get("/agents", operation_id="ListAgents", tags=["agents"], sync_to_thread=False)
    def list_agents() -> AgentListOut:
        """Every configured agent, sorted by id, with its provider, model and availability."""
        return agents_out

    @post("/query", operation_id="Query", tags=["agents"], status_code=200)
    async def query(data: JSONBody[QueryIn]) -> QueryOut:
        """Run a query to completion and return the whole answer."""
        if data.stream:
            raise InvalidRequestError("streaming is not supported on /query; use POST /stream")
        run = _prepare(data, server)
        parts: list[str] = []
        metadata: dict[str, Any] = {}
        async for event in run.events():
            if event.type == "chunk":
                parts.append(event.data["text"])
            elif event.type == "error":
                raise ExecutionError(event.data["message"])
            elif event.type == "end":
                metadata = event.data["metadata"]
        return QueryOut(
            response="".join(parts),
            session_id=run.session_id,
            agent=run.agent.id,
            metadata=ResponseMetadata(**metadata),
        )

    @post("/stream", operation_id="StreamQuery", tags=["agents"], status_code=200)
    async def stream(data: JSONBody[QueryIn]) -> ServerSentEvent:
        """Stream a query as SSE: `start`, `chunk`..., then `end` (or `error`); each event has an `id`."""
        run = _prepare(data, server)
        return ServerSentEvent(_sse(run, server.stopping))

    return [list_agents, query, stream]


def agent_list(runtime: AgentRuntime) -> AgentListOut:
    """The /agents body."""
    return AgentListOut(
        agents=[
            AgentOut(
                id=agent.id,
                description=agent.description,
                provider=agent.provider_name,
                model=agent.model,
                available=agent.available,
                default=agent.id == runtime.default_agent,
                unavailable_reason=agent.unavailable_reason,
                allowed_tools=list(agent.allowed_tools) if agent.allowed_tools else None,
                denied_tools=list(agent.denied_tools) if agent.denied_tools else None,
            )
            for agent in runtime.agents.values()
        ]
    )


def _prepare(data: QueryIn, server: ServerState) -> Run:
    return server.runtime.prepare(
        QueryInput(
            message=data.message,
            agent=data.agent,
            session_id=data.session_id,
            temperature=data.temperature,
            max_tokens=data.max_tokens,
        )
    )


async def _sse(run: Run, stopping: asyncio.Event) -> AsyncIterator[ServerSentEventMessage]:
    number = 0
    async for event in until_stopped(run.events(), stopping):
        number += 1
        yield ServerSentEventMessage(data=json.dumps(event.as_dict()), id=str(number))


async def until_stopped(
    events: AsyncIterator[AgentEvent], stopping: asyncio.Event
) -> AsyncIterator[AgentEvent]:
    """Relay events until the server starts shutting down, then finish with an `error` event."""
    stop = asyncio.ensure_future(stopping.wait())
    iterator = aiter(events)
    try:
        while True:
            step = asyncio.ensure_future(anext(iterator))
            await asyncio.wait({step, stop}, return_when=asyncio.FIRST_COMPLETED)
            if step.done():
                try:
                    yield step.result()
                except StopAsyncIteration:
                    return
            else:
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                yield AgentEvent("error", {"message": "server is shutting down", "code": "shutting_down"})
                return
    finally:
        stop.cancel()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
