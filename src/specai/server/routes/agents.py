"""List agents and query them, whole (`/query`) or streamed as server-sent events (`/stream`)."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Request, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody
from litestar.response import ServerSentEvent

from specai.agents.runtime import AgentEvent, AgentRuntime, QueryInput, Run
from specai.errors import InvalidRequestError
from specai.server.errors import error_responses
from specai.server.runs import finish
from specai.server.schemas.agents import AgentListOut, AgentOut, QueryIn, QueryOut, ResponseMetadata
from specai.server.security import principal
from specai.server.sse import (
    KEEPALIVE,
    KEEPALIVE_FRAME,
    STOPPING,
    EventStream,
    event_stream_response,
    frame,
    relay_batches,
    shutting_down,
)
from specai.server.state import ServerState

# a run can fail at the vendor (502/504), for want of a provider (503), or in the agent itself (500)
RUN_ERRORS = error_responses(401, 403, 404, 413, 500, 502, 504)
STREAM_EVENTS = (
    "Server-sent events, one JSON object per `data:` line with its `type`: `start`, then `chunk`, `tool_call`, "
    "`tool_result`..., then `end` (with `metadata`) or `error` (`message`, `code`; `shutting_down` when the "
    "server stops)"
)


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/agents`, `/query` and `/stream`, bound to this server's state."""
    agents_out = agent_list(server.runtime)  # agents are fixed for the server's lifetime

    @get(
        "/agents",
        operation_id="ListAgents",
        tags=["agents"],
        sync_to_thread=False,
        responses=error_responses(401),
    )
    def list_agents() -> AgentListOut:
        """Every configured agent, sorted by id, with its provider, model and availability."""
        return agents_out

    @post("/query", operation_id="Query", tags=["agents"], status_code=200, responses=RUN_ERRORS)
    async def query(data: JSONBody[QueryIn], request: Request) -> QueryOut:
        """Run a query to completion and return the whole answer (502/504 when the model vendor fails)."""
        if data.stream:
            raise InvalidRequestError("streaming is not supported on /query; use POST /stream")
        run = await _prepare(server.runtime, data, request)
        text, metadata = await finish(run, request.receive)
        return QueryOut(
            response=text,
            session_id=run.session_id,
            agent=run.agent.id,
            metadata=msgspec.convert(metadata, ResponseMetadata),
            tool_calls=run.tool_calls,
        )

    @post(
        "/stream",
        operation_id="StreamQuery",
        tags=["agents"],
        status_code=200,
        responses={**RUN_ERRORS, **event_stream_response(STREAM_EVENTS)},
    )
    async def stream(data: JSONBody[QueryIn], request: Request) -> ServerSentEvent:
        """Stream a query as SSE: `start`, `chunk`/`tool_call`/`tool_result`..., then `end` or `error`."""
        run = await _prepare(server.runtime, data, request)
        keepalive = server.settings.server.sse_keepalive_secs
        return EventStream(_sse(run.events(), server.stopping, keepalive))

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
                tools=[tool.spec.name for tool in agent.tools],
                allowed_tools=list(agent.allowed_tools) if agent.allowed_tools else None,
                denied_tools=list(agent.denied_tools) if agent.denied_tools else None,
            )
            for agent in runtime.agents.values()
        ]
    )


def owner(request: Request) -> str:
    """The authenticated user's id (never reused), or the single local owner when auth is off."""
    return principal(request).user_id


async def _prepare(runtime: AgentRuntime, data: QueryIn, request: Request) -> Run:
    query = QueryInput(
        message=data.message,
        agent=data.agent,
        session_id=data.session_id,
        temperature=data.temperature,
        max_tokens=data.max_tokens,
        system=data.system,
    )
    return await runtime.prepare(query, owner(request), principal(request))


async def _sse(
    events: AsyncIterator[AgentEvent], stopping: asyncio.Event, keepalive: float
) -> AsyncIterator[bytes]:
    """The run's events as SSE frames, numbered, those already waiting written together; a text chunk's frame is
    spliced, not built from a dict."""
    number = 0
    async for batch in relay_batches(events, stopping, keepalive):
        frames: list[bytes] = []
        for item in batch:
            if item is KEEPALIVE:
                frames.append(KEEPALIVE_FRAME)
                continue
            number += 1
            if item is STOPPING:
                frames.append(shutting_down(agent_error, event_id=str(number)).encode())
                yield b"".join(frames)
                return
            if item.type == "chunk":  # json.dumps(item.as_dict()), without the dict
                text = json.dumps(item.data["text"])
                frames.append(f'id: {number}\r\ndata: {{"type": "chunk", "text": {text}}}\r\n\r\n'.encode())
            else:
                frames.append(frame(json.dumps(item.as_dict()), number))
        yield b"".join(frames)


def agent_error(message: str, code: str) -> dict[str, Any]:
    """An `error` event of an agent stream (the StreamChunk shape)."""
    return AgentEvent("error", {"message": message, "code": code}).as_dict()
