"""The agent loop over a real SQLite store: history as chat messages, tools with policy, no orphans on failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from specai.agents.runtime import AgentEvent, AgentRuntime, QueryInput
from specai.agents.sessions import SessionStore
from specai.config import AgentSettings, ModelSettings, Settings
from specai.errors import NotFoundError
from specai.providers import (
    BaseProvider,
    Finished,
    ModelEvent,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    UpstreamError,
    Usage,
)
from specai.store import Store

CALC_SCRIPT: list[dict[str, Any]] = [
    {"tool_call": {"name": "calculator", "arguments": {"expression": "6*7"}}},
    {"text": "The answer is 42."},
]


class RecordingUpstream(BaseProvider):
    """Stands in for a model vendor: records every request, answers from a list of turns, can fail."""

    name = "recording"

    def __init__(self, turns: list[Any], fail_after_text: bool = False) -> None:
        self.turns = turns
        self.requests: list[ModelRequest] = []
        self.fail_after_text = fail_after_text

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        self.requests.append(request)
        turn = self.turns[min(len(self.requests) - 1, len(self.turns) - 1)]
        if isinstance(turn, ToolCall):
            yield ToolCallRequested(turn)
            yield Finished("tool_calls")
            return
        for word in turn.split():
            yield TextDelta(word + " ")
        if self.fail_after_text:
            raise UpstreamError("upstream returned 500")
        yield Usage(3, len(turn.split()))
        yield Finished("stop")


def run_query(runtime: AgentRuntime, query: QueryInput, owner: str = "alice") -> tuple[Any, list[AgentEvent]]:
    async def go() -> tuple[Any, list[AgentEvent]]:
        run = await runtime.prepare(query, owner)
        return run, [event async for event in run.events()]

    return asyncio.run(go())


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Two mock agents (one scripted to call the calculator, one denied it), memory of 2 exchanges."""
    return Settings(
        home=tmp_path,
        model=ModelSettings(mock_delay_ms=0),
        agents={
            "calc": AgentSettings(mock_script=CALC_SCRIPT, memory_k=2, prompt="You add numbers."),
            "strict": AgentSettings(mock_script=CALC_SCRIPT, denied_tools=("calc*",)),
        },
    )


def with_store(settings: Settings, body: Any) -> Any:
    async def go() -> Any:
        store = await Store.open(settings)
        try:
            runtime = AgentRuntime(settings, SessionStore(store))
            return await body(runtime, SessionStore(store))
        finally:
            await store.close()

    return asyncio.run(go())


def test_scripted_tool_call_runs_and_result_goes_back_to_the_model(settings: Settings) -> None:
    runtime = AgentRuntime(settings)
    run, events = run_query(runtime, QueryInput("what is 6*7?", agent="calc"))
    kinds = [event.type for event in events]
    assert kinds[:3] == ["start", "tool_call", "tool_result"]
    assert kinds[-1] == "end"
    assert "chunk" in kinds
    assert events[1].data == {"name": "calculator", "arguments": {"expression": "6*7"}}
    assert events[2].data["result"]["success"] is True
    assert '"result": 42' in events[2].data["result"]["output"]
    tool_message = run.messages[-2]
    assert tool_message.role == "tool"
    assert '"result": 42' in tool_message.content
    assert run.messages[-3].tool_calls[0].name == "calculator"
    assert run.tool_calls == [
        {"name": "calculator", "arguments": {"expression": "6*7"}, **events[2].data["result"]}
    ]


def test_denied_tool_is_refused_and_the_model_is_told(settings: Settings) -> None:
    runtime = AgentRuntime(settings)
    run, events = run_query(runtime, QueryInput("what is 6*7?", agent="strict"))
    result = next(event for event in events if event.type == "tool_result").data["result"]
    assert result == {"success": False, "error": "tool 'calculator' is not allowed for this agent"}
    assert run.messages[-2].content == "ERROR: tool 'calculator' is not allowed for this agent"
    assert [tool.spec.name for tool in runtime.get("strict").tools] == [
        "current_time",
        "graph_add",
        "graph_search",
    ]


def test_tool_loop_is_bounded(tmp_path: Path) -> None:
    loop_forever = [{"tool_call": {"name": "current_time", "arguments": {}}}]
    settings = Settings(
        home=tmp_path,
        model=ModelSettings(mock_delay_ms=0),
        agents={"loop": AgentSettings(mock_script=loop_forever, max_tool_iterations=3)},
    )
    runtime = AgentRuntime(settings)
    upstream = RecordingUpstream([ToolCall("c1", "current_time", {})] * 3 + ["done"])
    object.__setattr__(runtime.agents["loop"], "provider", upstream)
    _, events = run_query(runtime, QueryInput("go", agent="loop"))
    assert [e.type for e in events].count("tool_call") == 3
    assert len(upstream.requests) == 4
    assert upstream.requests[-1].tools == ()  # the last call offers no tools, so the loop ends
    assert events[-1].type == "end"


def test_history_reaches_the_model_as_chat_messages_and_is_stored(settings: Settings) -> None:
    async def body(runtime: AgentRuntime, sessions: SessionStore) -> None:
        upstream = RecordingUpstream(["first answer", "second answer", "third answer"])
        object.__setattr__(runtime.agents["calc"], "provider", upstream)
        run = await runtime.prepare(QueryInput("one", agent="calc"), "alice")
        [e async for e in run.events()]
        for text in ("two", "three"):
            follow = await runtime.prepare(QueryInput(text, agent="calc", session_id=run.session_id), "alice")
            [e async for e in follow.events()]
        last = upstream.requests[-1].messages
        assert [(m.role, m.content) for m in last] == [
            ("system", "You add numbers."),
            ("user", "one"),
            ("assistant", "first answer "),
            ("user", "two"),
            ("assistant", "second answer "),
            ("user", "three"),
        ]
        stored = await sessions.messages(run.session_id, "alice")
        assert [m.role for m in stored] == ["user", "assistant"] * 3

    with_store(settings, body)


def test_memory_k_limits_history(settings: Settings) -> None:
    async def body(runtime: AgentRuntime, sessions: SessionStore) -> None:
        upstream = RecordingUpstream(["ok"])
        object.__setattr__(runtime.agents["calc"], "provider", upstream)
        session = "s-memory"
        for text in ("a", "b", "c", "d"):
            run = await runtime.prepare(QueryInput(text, agent="calc", session_id=session), "alice")
            [e async for e in run.events()]
        users = [m.content for m in upstream.requests[-1].messages if m.role == "user"]
        assert users == ["b", "c", "d"]  # memory_k = 2 earlier exchanges, then the new turn

    with_store(settings, body)


def test_failed_model_call_stores_nothing(settings: Settings) -> None:
    async def body(runtime: AgentRuntime, sessions: SessionStore) -> None:
        object.__setattr__(
            runtime.agents["calc"], "provider", RecordingUpstream(["partial text"], fail_after_text=True)
        )
        run = await runtime.prepare(QueryInput("hello", agent="calc", session_id="s-fail"), "alice")
        events = [e async for e in run.events()]
        assert events[-1].as_dict() == {
            "type": "error",
            "message": "upstream returned 500",
            "code": "upstream_error",
        }
        assert isinstance(run.failure, UpstreamError)
        assert await sessions.owner_of("s-fail") is None  # no session, no orphan user message
        assert await sessions.count() == 0

    with_store(settings, body)


def test_another_user_cannot_continue_a_session(settings: Settings) -> None:
    async def body(runtime: AgentRuntime, sessions: SessionStore) -> None:
        run = await runtime.prepare(QueryInput("mine", agent="calc"), "alice")
        [e async for e in run.events()]
        with pytest.raises(NotFoundError):
            await runtime.prepare(QueryInput("let me in", agent="calc", session_id=run.session_id), "mallory")
        assert len(await sessions.messages(run.session_id, "alice")) == 4  # user, tool call, tool, answer

    with_store(settings, body)


def test_continuing_a_session_keeps_its_agent(settings: Settings) -> None:
    async def body(runtime: AgentRuntime, sessions: SessionStore) -> None:
        run = await runtime.prepare(QueryInput("first", agent="strict"), "alice")
        [e async for e in run.events()]
        follow = await runtime.prepare(QueryInput("second", session_id=run.session_id), "alice")
        assert follow.agent.id == "strict"  # not the default agent
        other = await runtime.prepare(QueryInput("third", agent="calc", session_id=run.session_id), "alice")
        assert other.agent.id == "calc"  # naming an agent still wins

    with_store(settings, body)


def test_an_unexpected_provider_failure_ends_with_an_error_event(settings: Settings) -> None:
    class Broken(BaseProvider):
        name = "broken"

        async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
            raise RuntimeError("bug in a provider")
            yield TextDelta("never")  # pragma: no cover - makes this an async generator

    runtime = AgentRuntime(settings)
    object.__setattr__(runtime.agents["calc"], "provider", Broken())
    _run, events = run_query(runtime, QueryInput("hi", agent="calc"))
    assert events[-1].as_dict() == {
        "type": "error",
        "message": "the agent failed unexpectedly; the server log has the details",
        "code": "execution_error",
    }
