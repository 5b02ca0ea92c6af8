"""The agent runtime: profiles from settings, query validation, and the start/chunk/end event stream."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path

import pytest

from specai.agents.runtime import AgentEvent, AgentRuntime, QueryInput, Run
from specai.config import AgentSettings, ModelSettings, Settings
from specai.errors import AgentNotFoundError, InvalidRequestError, ProviderUnavailableError
from specai.providers import MOCK_MODEL, MOCK_REPLY, ChatMessage


def fast_settings(home: Path, **kwargs: object) -> Settings:
    """Settings whose mock provider streams without delay."""
    model = kwargs.pop("model", ModelSettings(mock_delay_ms=0))
    return Settings(home=home, model=model, **kwargs)  # type: ignore[arg-type]


def prepare(runtime: AgentRuntime, query: QueryInput, owner: str = "local") -> Run:
    """Run the async `prepare` from a sync test."""
    return asyncio.run(runtime.prepare(query, owner))


def collect(run: Run) -> list[AgentEvent]:
    async def gather() -> list[AgentEvent]:
        return [event async for event in run.events()]

    return asyncio.run(gather())


@pytest.fixture
def runtime(tmp_path: Path) -> AgentRuntime:
    """A runtime built from default settings (one mock agent), without streaming delays."""
    return AgentRuntime(fast_settings(tmp_path))


def test_default_settings_give_one_mock_agent(runtime: AgentRuntime) -> None:
    assert list(runtime.agents) == ["default"]
    assert runtime.default_agent == "default"
    agent = runtime.get(None)
    assert agent.id == "default"
    assert agent.provider_name == "mock"
    assert agent.model == MOCK_MODEL
    assert agent.available is True
    assert agent.unavailable_reason is None
    assert agent.memory_k == 10


def test_configured_default_agent_is_used(tmp_path: Path) -> None:
    settings = fast_settings(
        tmp_path, agents={"alpha": AgentSettings(), "beta": AgentSettings()}, default_agent="beta"
    )
    runtime = AgentRuntime(settings)
    assert runtime.default_agent == "beta"
    assert runtime.get(None).id == "beta"
    assert runtime.get("alpha").id == "alpha"
    assert prepare(runtime, QueryInput("hi")).agent.id == "beta"


def test_without_default_agent_the_first_configured_agent_is_used(tmp_path: Path) -> None:
    runtime = AgentRuntime(
        fast_settings(tmp_path, agents={"zeta": AgentSettings(), "alpha": AgentSettings()})
    )
    assert runtime.default_agent == "alpha"
    assert list(runtime.agents) == ["alpha", "zeta"]


def test_unknown_agent_raises_agent_not_found(runtime: AgentRuntime) -> None:
    with pytest.raises(AgentNotFoundError) as info:
        runtime.get("ghost")
    assert info.value.message == "agent 'ghost' not found; available: default"
    assert info.value.code == "agent_not_found"
    assert info.value.status == 404
    with pytest.raises(AgentNotFoundError, match="agent 'ghost' not found"):
        prepare(runtime, QueryInput("hi", agent="ghost"))


def test_agent_profile_falls_back_to_model_settings(tmp_path: Path) -> None:
    model = ModelSettings(model_name="base-model", temperature=0.5, max_tokens=100, mock_delay_ms=0)
    settings = fast_settings(
        tmp_path,
        model=model,
        agents={
            "plain": AgentSettings(),
            "tuned": AgentSettings(model_name="own", temperature=1.5, max_tokens=7),
        },
    )
    runtime = AgentRuntime(settings)
    plain, tuned = runtime.get("plain"), runtime.get("tuned")
    assert (plain.model, plain.temperature, plain.max_tokens) == ("base-model", 0.5, 100)
    assert (tuned.model, tuned.temperature, tuned.max_tokens) == ("own", 1.5, 7)


@pytest.mark.parametrize("message", ["", "   ", "\n\t"])
def test_prepare_rejects_empty_message(runtime: AgentRuntime, message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        prepare(runtime, QueryInput(message))
    assert info.value.message == "message must not be empty"
    assert info.value.code == "invalid_request"


@pytest.mark.parametrize("temperature", [-0.1, 2.01, 100.0])
def test_prepare_rejects_out_of_range_temperature(runtime: AgentRuntime, temperature: float) -> None:
    with pytest.raises(InvalidRequestError, match="temperature must be between 0 and 2"):
        prepare(runtime, QueryInput("hi", temperature=temperature))


@pytest.mark.parametrize("temperature", [0.0, 2.0])
def test_prepare_accepts_boundary_temperature(runtime: AgentRuntime, temperature: float) -> None:
    assert prepare(runtime, QueryInput("hi", temperature=temperature)).options.temperature == temperature


@pytest.mark.parametrize("max_tokens", [0, -5])
def test_prepare_rejects_non_positive_max_tokens(runtime: AgentRuntime, max_tokens: int) -> None:
    with pytest.raises(InvalidRequestError, match="max_tokens must be greater than 0"):
        prepare(runtime, QueryInput("hi", max_tokens=max_tokens))


def test_prepare_creates_a_fresh_uuid_session_when_none_given(runtime: AgentRuntime) -> None:
    first = prepare(runtime, QueryInput("hi"))
    second = prepare(runtime, QueryInput("hi"))
    assert uuid.UUID(first.session_id).version == 4
    assert str(uuid.UUID(first.session_id)) == first.session_id
    assert first.session_id != second.session_id


def test_prepare_keeps_a_given_session_id(runtime: AgentRuntime) -> None:
    run = prepare(runtime, QueryInput("hi", session_id="my-session"))
    assert run.session_id == "my-session"


def test_prepare_puts_the_agent_prompt_first(tmp_path: Path) -> None:
    runtime = AgentRuntime(fast_settings(tmp_path, agents={"coder": AgentSettings(prompt="You write code.")}))
    run = prepare(runtime, QueryInput("hello"))
    assert run.messages == [ChatMessage("system", "You write code."), ChatMessage("user", "hello")]


def test_events_stream_start_chunks_and_end(runtime: AgentRuntime) -> None:
    run = prepare(runtime, QueryInput("hello"))
    events = collect(run)

    start, *chunks, end = events
    assert start.type == "start"
    assert start.as_dict() == {"type": "start", "session_id": run.session_id, "agent": "default"}

    assert len(chunks) >= 2
    assert all(event.type == "chunk" for event in chunks)
    assert "".join(event.data["text"] for event in chunks) == MOCK_REPLY

    assert end.type == "end"
    metadata = end.data["metadata"]
    assert metadata["model"] == MOCK_MODEL == "mock-model"
    assert isinstance(metadata["processing_time_ms"], int)
    assert metadata["processing_time_ms"] >= 0
    assert dt.datetime.fromisoformat(metadata["timestamp"]).tzinfo is not None
    assert metadata["run_id"].startswith("run-")
    assert end.as_dict() == {"type": "end", "metadata": metadata}


def test_events_honour_max_tokens(runtime: AgentRuntime) -> None:
    events = collect(prepare(runtime, QueryInput("hello", max_tokens=2)))
    chunks = [event.data["text"] for event in events if event.type == "chunk"]
    assert len(chunks) == 2
    assert "".join(chunks) == " ".join(MOCK_REPLY.split(" ")[:2])
    assert events[-1].type == "end"


def test_agent_with_unavailable_provider_reports_why(tmp_path: Path) -> None:
    runtime = AgentRuntime(
        fast_settings(
            tmp_path,
            agents={
                "mock": AgentSettings(),
                "gpt": AgentSettings(model_provider="openai", api_key_source="env:SPECAI_TEST_UNSET_KEY"),
            },
        )
    )
    agent = runtime.get("gpt")
    assert agent.provider_name == "openai"
    assert agent.available is False
    assert agent.unavailable_reason is not None
    assert "SPECAI_TEST_UNSET_KEY" in agent.unavailable_reason
    assert runtime.get("mock").available is True

    with pytest.raises(ProviderUnavailableError) as info:
        prepare(runtime, QueryInput("hi", agent="gpt"))
    assert info.value.code == "provider_unavailable"
    assert info.value.status == 503
    assert info.value.message.startswith("agent 'gpt' cannot run: ")
    assert agent.unavailable_reason in info.value.message


def test_prepare_rejects_overlong_session_id() -> None:
    runtime = AgentRuntime(Settings(home=Path("/nonexistent")))
    with pytest.raises(InvalidRequestError, match="session_id"):
        prepare(runtime, QueryInput(message="hi", session_id="x" * 129))
