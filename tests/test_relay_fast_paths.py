"""The relay's fast paths: whole answers for callers that do not stream, SSE frames encoded once, one keep-alive
timer per silence — each giving exactly what the slower path gave."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
from litestar.response import ServerSentEventMessage

from specai.agents.runtime import Agent, AgentEvent, Run
from specai.agents.tools import ToolPolicy, offered_tools
from specai.providers import (
    BaseProvider,
    ChatMessage,
    GenerationOptions,
    ModelEvent,
    ModelRequest,
    ModelResponse,
    ToolCall,
    Usage,
)
from specai.server.routes.agents import _sse
from specai.server.routes.openai import _MARK
from specai.server.sse import KEEPALIVE, KEEPALIVE_FRAME, STOPPING, frame, relay, relay_batches


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class WholeOnly(BaseProvider):
    """Answers whole: the first call asks for the clock tool, the second says the time; streaming is a bug."""

    name = "whole-only"

    def __init__(self) -> None:
        self.requests: list[ModelRequest] = []

    def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        raise AssertionError("a whole-answer run must not stream")

    async def generate(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        if len(self.requests) == 1:
            call = ToolCall("call_1", "current_time", {})
            return ModelResponse("", [call], Usage(5, 1), "tool_calls")
        return ModelResponse("It is late.", [], Usage(9, 4), "stop")


def _run(provider: BaseProvider) -> Run:
    policy = ToolPolicy(("current_time",), None)
    agent = Agent(
        id="clock",
        description="",
        provider_name="test",
        model="m",
        base_url=None,
        temperature=None,
        max_tokens=None,
        memory_k=0,
        max_tool_iterations=3,
        policy=policy,
        tools=offered_tools(policy),
        provider=provider,
    )
    return Run(agent, "s1", "local", [ChatMessage("user", "What time is it?")], GenerationOptions("m"))


@pytest.mark.anyio
async def test_a_run_that_does_not_stream_asks_for_whole_answers_and_still_runs_its_tools() -> None:
    provider = WholeOnly()
    run = _run(provider)
    events = [event async for event in run.events(stream=False)]
    kinds = [event.type for event in events]
    assert kinds == ["start", "tool_call", "tool_result", "chunk", "end"]
    assert events[3].data == {"text": "It is late."}
    assert events[-1].data["metadata"]["usage"] == {
        "prompt_tokens": 14,
        "completion_tokens": 5,
        "total_tokens": 19,
    }
    assert run.finish_reason == "stop"
    assert run.failure is None
    assert [c["name"] for c in run.tool_calls] == ["current_time"]
    assert provider.requests[1].messages[-1].role == "tool"  # the tool's result went back to the model


def test_frames_are_the_bytes_litestar_would_encode() -> None:
    assert ServerSentEventMessage(comment="keep-alive", data=None).encode() == KEEPALIVE_FRAME
    assert frame("[DONE]") == ServerSentEventMessage(data="[DONE]").encode()
    assert frame('{"a": 1}', 3) == ServerSentEventMessage(data='{"a": 1}', id="3").encode()
    assert json.dumps(_MARK) not in json.dumps("any text a model writes")


class _Events:
    def __init__(self, items: list[Any]) -> None:
        self.items = items

    async def __aiter__(self) -> AsyncIterator[Any]:
        for item in self.items:
            await asyncio.sleep(0)
            yield item


@pytest.mark.anyio
async def test_stream_chunk_frames_are_the_json_of_the_event() -> None:
    texts = ["plain", "line\nbreak", 'quote " and \\', "é😀\u2028", "\x00"]
    events = [AgentEvent("start", {"session_id": "s", "agent": "a"})]
    events += [AgentEvent("chunk", {"text": text}) for text in texts]
    frames = [f async for f in _sse(aiter(_Events(events)), asyncio.Event(), 30)]
    expected = [
        ServerSentEventMessage(data=json.dumps(event.as_dict()), id=str(n)).encode()
        for n, event in enumerate(events, 1)
    ]
    assert frames == expected


@pytest.mark.anyio
async def test_relay_sends_keepalives_only_in_silences() -> None:
    async def source() -> AsyncIterator[str]:
        for _ in range(20):  # 0.2 s of events 10 ms apart: never 50 ms of silence
            await asyncio.sleep(0.01)
            yield "event"
        await asyncio.sleep(0.18)  # then a silence of three and a half keep-alive periods
        yield "last"

    items = [item async for item in relay(source(), asyncio.Event(), 0.05)]
    assert items[:20] == ["event"] * 20
    assert items[-1] == "last"
    assert 2 <= items[20:-1].count(KEEPALIVE) <= 4
    assert set(items[20:-1]) == {KEEPALIVE}


@pytest.mark.anyio
async def test_relay_ends_with_the_shutdown_marker_and_stops_the_source() -> None:
    stopping = asyncio.Event()
    closed = asyncio.Event()

    async def source() -> AsyncIterator[str]:
        try:
            yield "first"
            await asyncio.sleep(30)
            yield "never"
        finally:
            closed.set()

    items = []
    async for item in relay(source(), stopping, 10):
        items.append(item)
        stopping.set()
    assert items == ["first", STOPPING]
    assert closed.is_set()


@pytest.mark.anyio
async def test_items_already_waiting_come_as_one_batch_in_order() -> None:
    async def source() -> AsyncIterator[int]:
        for n in range(10):  # produced without a pause: all waiting by the time the consumer looks
            yield n
        await asyncio.sleep(0.05)
        yield 10

    batches = [batch async for batch in relay_batches(source(), asyncio.Event(), 30)]
    assert [item for batch in batches for item in batch] == list(range(11))
    assert len(batches) < 11
    assert batches[-1] == [10]


@pytest.mark.anyio
async def test_a_failing_source_delivers_what_came_before_then_raises() -> None:
    async def source() -> AsyncIterator[str]:
        yield "a"
        yield "b"
        raise RuntimeError("boom")

    seen: list[Any] = []
    with pytest.raises(RuntimeError, match="boom"):  # noqa: PT012 (reading the batches is what raises)
        async for batch in relay_batches(source(), asyncio.Event(), 30):
            seen += batch
    assert seen == ["a", "b"]
