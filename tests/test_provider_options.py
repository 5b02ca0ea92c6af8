"""Per-provider options against the fake upstreams: what reaches the vendor, what is refused, finish reasons."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from fakes import FakeAnthropic, FakeOllama, FakeOpenAI, FakeToolCall, FakeUpstream, Turn
from specai.providers import (
    ChatMessage,
    Finished,
    GenerationOptions,
    MockProvider,
    MockStep,
    ModelEvent,
    ModelRequest,
    Provider,
    ProviderSpec,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    ToolChoice,
    ToolSpec,
    Usage,
    build_provider,
    collect,
)

KEY = "sk-test-secret-0123456789"
WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec(name="clock", description="The time.", parameters={"type": "object", "properties": {}})
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True}}
JSON_OBJECT = {"type": "json_object"}
NAMED: ToolChoice = {"type": "function", "function": {"name": "get_weather"}}
PROVIDER = {FakeOpenAI: "openai", FakeAnthropic: "anthropic", FakeOllama: "ollama"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def upstream(fake_type: type[FakeUpstream], **fake_options: Any) -> AsyncIterator[tuple[Any, Provider]]:
    """A fake upstream and a provider pointed at it, both closed after."""
    with fake_type(**fake_options) as fake:
        spec = ProviderSpec(PROVIDER[fake_type], base_url=fake.base_url, api_key_source=KEY, timeout=10.0)
        provider = build_provider(spec, env={})
        try:
            yield fake, provider
        finally:
            await provider.aclose()


def ask(
    text: str = "Hi",
    *,
    tools: tuple[ToolSpec, ...] = (),
    tool_choice: ToolChoice | None = None,
    messages: tuple[ChatMessage, ...] | None = None,
    **options: Any,
) -> ModelRequest:
    return ModelRequest(
        messages=messages or (ChatMessage("user", text),),
        options=GenerationOptions(model="fake-model", **options),
        tools=tools,
        tool_choice=tool_choice,
    )


async def events_of(provider: Provider, request: ModelRequest) -> list[ModelEvent]:
    return [event async for event in provider.stream(request)]


def finish_of(events: list[ModelEvent]) -> str | None:
    assert isinstance(events[-1], Finished)
    return events[-1].reason


def text_of(events: list[ModelEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def calls_of(events: list[ModelEvent]) -> list[ToolCall]:
    return [e.call for e in events if isinstance(e, ToolCallRequested)]


# A conversation as an OpenAI client sends it back: the assistant's tool calls, then one tool message per call
# carrying only the call's id (no tool name), then nothing else; the provider has never seen these calls.
CLIENT_CONVERSATION = (
    ChatMessage("system", "Be brief."),
    ChatMessage("user", "Weather in Oslo and the time?"),
    ChatMessage(
        "assistant",
        "",
        tool_calls=(
            ToolCall("call_abc123", "get_weather", {"city": "Oslo"}),
            ToolCall("call_def456", "clock", {}),
        ),
    ),
    ChatMessage("tool", "rain, 4 C", tool_call_id="call_abc123"),
    ChatMessage("tool", "09:15", tool_call_id="call_def456"),
)


# -- all vendors ------------------------------------------------------------------------------------------------------

NEVER_UNSET = ("top_p", "stop", "stop_sequences", "seed", "presence_penalty", "frequency_penalty")
NEVER_UNSET_BODY = ("response_format", "output_config", "format", "tool_choice", "options")


@pytest.mark.anyio
@pytest.mark.parametrize("fake_type", [FakeOpenAI, FakeAnthropic, FakeOllama])
async def test_unset_options_stay_out_of_the_request(fake_type: type[FakeUpstream]) -> None:
    async with upstream(fake_type) as (fake, provider):
        await provider.generate(ask(tools=(WEATHER,)))
        body = fake.last_body
    assert not [name for name in NEVER_UNSET + NEVER_UNSET_BODY if name in body]
    assert body["tools"]


# -- openai -----------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_openai_passes_every_option_through() -> None:
    async with upstream(FakeOpenAI) as (fake, provider):
        request = ask(
            tools=(WEATHER,),
            tool_choice=NAMED,
            top_p=0.5,
            stop=("END", "STOP"),
            seed=7,
            presence_penalty=0.25,
            frequency_penalty=-0.5,
            response_format=JSON_SCHEMA,
        )
        assert provider.unsupported(request) is None
        await provider.generate(request)
        whole = fake.last_body
        await collect(provider.stream(request))
        body = fake.last_body
    assert {k: v for k, v in body.items() if not k.startswith("stream")} == whole  # the same, but for stream
    assert "stream" not in whole
    assert body["top_p"] == 0.5
    assert body["stop"] == ["END", "STOP"]
    assert body["seed"] == 7
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.25, -0.5)
    assert body["response_format"] == JSON_SCHEMA
    assert body["tool_choice"] == NAMED
    assert [t["function"]["name"] for t in body["tools"]] == ["get_weather"]
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.anyio
@pytest.mark.parametrize("choice", ["auto", "none", "required"])
async def test_openai_tool_choice_strings_go_as_they_are(choice: str) -> None:
    async with upstream(FakeOpenAI) as (fake, provider):
        await provider.generate(ask(tools=(WEATHER,), tool_choice=choice))
        assert fake.last_body["tool_choice"] == choice


@pytest.mark.anyio
async def test_openai_tool_choice_without_tools_is_not_sent() -> None:
    async with upstream(FakeOpenAI) as (fake, provider):  # the fake, like the API, rejects it without tools
        response = await provider.generate(ask(tool_choice="auto"))
        assert response.text
        assert "tool_choice" not in fake.last_body


@pytest.mark.parametrize(
    ("tools", "choice"),
    [
        ((), "required"),
        ((), NAMED),
        ((CLOCK,), NAMED),
        ((WEATHER,), {"type": "function", "function": {}}),
    ],
)
def test_a_forced_tool_nobody_offered_is_refused(tools: tuple[ToolSpec, ...], choice: ToolChoice) -> None:
    providers = [
        build_provider(ProviderSpec("openai", base_url="http://127.0.0.1:9/v1")),
        build_provider(ProviderSpec("anthropic", api_key_source=KEY)),
        MockProvider(script=(MockStep(tool_calls=(("get_weather", {}),)),)),
    ]
    for provider in providers:
        assert provider.unsupported(ask(tools=tools, tool_choice=choice)) == "tool_choice", provider.name


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("content_filter", "content_filter"),
        ("function_call", "tool_calls"),
        ("eos_token", None),
    ],
)
async def test_openai_finish_reasons(raw: str, reason: str | None) -> None:
    async with upstream(FakeOpenAI, turns=[Turn(tokens=["Hi"], reason=raw)]) as (_fake, provider):
        assert finish_of(await events_of(provider, ask())) == reason


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raw", "reason"), [("stop", "tool_calls"), ("eos", "tool_calls"), ("length", "length")]
)
async def test_openai_compatible_server_that_misnames_a_tool_call_finish(raw: str, reason: str) -> None:
    turn = Turn(tool_calls=[FakeToolCall("get_weather", {"city": "Oslo"})], reason=raw)
    async with upstream(FakeOpenAI, turns=[turn]) as (_fake, provider):
        events = await events_of(provider, ask(tools=(WEATHER,)))
    assert [c.name for c in calls_of(events)] == ["get_weather"]
    assert finish_of(events) == reason


@pytest.mark.anyio
async def test_openai_client_supplied_tool_results() -> None:
    async with upstream(FakeOpenAI) as (fake, provider):
        request = ask(messages=CLIENT_CONVERSATION, tools=(WEATHER, CLOCK))
        assert (await provider.generate(request)).text
        sent = fake.last_body["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent[2]["tool_calls"]] == ["call_abc123", "call_def456"]
    assert sent[3] == {"role": "tool", "tool_call_id": "call_abc123", "content": "rain, 4 C"}


# -- anthropic --------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_anthropic_stop_and_json_schema_reach_the_api_in_its_shape() -> None:
    async with upstream(FakeAnthropic) as (fake, provider):
        request = ask(stop=("END",), response_format=JSON_SCHEMA)
        assert provider.unsupported(request) is None
        await provider.generate(request)
        body = fake.last_body
    assert body["stop_sequences"] == ["END"]
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert "response_format" not in body
    assert "tool_choice" not in body


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        (NAMED, {"type": "tool", "name": "get_weather"}),
    ],
)
async def test_anthropic_tool_choice(choice: ToolChoice, sent: dict[str, Any]) -> None:
    async with upstream(FakeAnthropic) as (fake, provider):
        request = ask(tools=(WEATHER,), tool_choice=choice)
        assert provider.unsupported(request) is None
        await provider.generate(request)
        assert fake.last_body["tool_choice"] == sent
        assert [t["name"] for t in fake.last_body["tools"]] == ["get_weather"]


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        ({"top_p": 0.9}, "top_p"),
        ({"seed": 1}, "seed"),
        ({"presence_penalty": 0.1}, "presence_penalty"),
        ({"frequency_penalty": 0.1}, "frequency_penalty"),
        ({"response_format": JSON_OBJECT}, "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
        ({"seed": 1, "top_p": 0.9}, "top_p"),
        ({"stop": ("x",), "response_format": JSON_SCHEMA, "max_tokens": 5}, None),
        ({"temperature": 0.3}, None),  # not sent, logged (the agents' configured temperature keeps working)
    ],
)
def test_anthropic_unsupported_names_the_parameter(options: dict[str, Any], refused: str | None) -> None:
    provider = build_provider(ProviderSpec("anthropic", api_key_source=KEY))
    assert provider.unsupported(ask(**options)) == refused


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", None),
    ],
)
async def test_anthropic_stop_reasons(raw: str, reason: str | None) -> None:
    async with upstream(FakeAnthropic, turns=[Turn(tokens=["Hi"], reason=raw)]) as (_fake, provider):
        events = await events_of(provider, ask())
    assert finish_of(events) == reason
    assert Usage(prompt_tokens=13, completion_tokens=1) in events


@pytest.mark.anyio
async def test_anthropic_client_supplied_tool_results_become_one_user_turn() -> None:
    async with upstream(FakeAnthropic, tokens=["Rainy", ", 09:15."]) as (fake, provider):
        response = await provider.generate(ask(messages=CLIENT_CONVERSATION, tools=(WEATHER, CLOCK)))
        body = fake.last_body
    assert response.text == "Rainy, 09:15."
    assert response.finish_reason == "stop"
    assert body["system"] == "Be brief."
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo and the time?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_abc123", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "call_def456", "name": "clock", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_abc123", "content": "rain, 4 C"},
                {"type": "tool_result", "tool_use_id": "call_def456", "content": "09:15"},
            ],
        },
    ]


# -- ollama -----------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ollama_options_and_json_object() -> None:
    async with upstream(FakeOllama) as (fake, provider):
        request = ask(
            top_p=0.5,
            stop=("END",),
            seed=7,
            presence_penalty=0.25,
            frequency_penalty=0.5,
            max_tokens=9,
            response_format=JSON_OBJECT,
        )
        assert provider.unsupported(request) is None
        await provider.generate(request)
        body = fake.last_body
    assert body["options"] == {
        "num_predict": 9,
        "top_p": 0.5,
        "seed": 7,
        "presence_penalty": 0.25,
        "frequency_penalty": 0.5,
        "stop": ["END"],
    }
    assert body["format"] == "json"


@pytest.mark.anyio
async def test_ollama_json_schema_is_the_format() -> None:
    async with upstream(FakeOllama) as (fake, provider):
        await provider.generate(ask(response_format=JSON_SCHEMA))
        assert fake.last_body["format"] == SCHEMA
        assert "options" not in fake.last_body


@pytest.mark.anyio
@pytest.mark.parametrize(("choice", "tools_sent"), [(None, True), ("auto", True), ("none", False)])
async def test_ollama_tool_choice_auto_and_none(choice: ToolChoice | None, tools_sent: bool) -> None:
    async with upstream(FakeOllama) as (fake, provider):
        request = ask(tools=(WEATHER,), tool_choice=choice)
        assert provider.unsupported(request) is None
        await provider.generate(request)
        assert bool(fake.last_body.get("tools")) is tools_sent
        assert "tool_choice" not in fake.last_body


@pytest.mark.parametrize("choice", ["required", NAMED])
def test_ollama_cannot_force_a_tool_call(choice: ToolChoice) -> None:
    provider = build_provider(ProviderSpec("ollama"))
    assert provider.unsupported(ask(tools=(WEATHER,), tool_choice=choice)) == "tool_choice"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("turn", "reason"),
    [
        (Turn(tokens=["Hi"]), "stop"),
        (Turn(tokens=["Hi"], reason="length"), "length"),
        (Turn(tokens=["Hi"], reason="load"), None),
        (Turn(tool_calls=[FakeToolCall("get_weather", {"city": "Oslo"})]), "tool_calls"),
    ],
)
async def test_ollama_done_reasons(turn: Turn, reason: str | None) -> None:
    async with upstream(FakeOllama, turns=[turn]) as (_fake, provider):
        assert finish_of(await events_of(provider, ask(tools=(WEATHER,)))) == reason


@pytest.mark.anyio
async def test_ollama_without_counts_reports_no_usage() -> None:
    async with upstream(FakeOllama, report_usage=False) as (_fake, provider):
        events = await events_of(provider, ask())
    assert text_of(events)
    assert not [e for e in events if isinstance(e, Usage)]


@pytest.mark.anyio
async def test_ollama_client_supplied_tool_results_name_their_tool() -> None:
    async with upstream(FakeOllama) as (fake, provider):
        assert (await provider.generate(ask(messages=CLIENT_CONVERSATION, tools=(WEATHER, CLOCK)))).text
        sent = fake.last_body["messages"]
    assert sent[2]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
        {"function": {"name": "clock", "arguments": {}}},
    ]
    assert sent[3:] == [
        {"role": "tool", "content": "rain, 4 C", "tool_name": "get_weather"},
        {"role": "tool", "content": "09:15", "tool_name": "clock"},
    ]


# -- mock -------------------------------------------------------------------------------------------------------------


def mock(*steps: MockStep) -> MockProvider:
    return MockProvider(delay=0, script=steps)


@pytest.mark.anyio
async def test_mock_max_tokens_cuts_with_length() -> None:
    provider = mock(MockStep(text="one two three four five"))
    events = await events_of(provider, ask(max_tokens=3))
    assert text_of(events) == "one two three"
    assert finish_of(events) == "length"
    assert Usage(prompt_tokens=1, completion_tokens=3) in events
    exact = await events_of(provider, ask(max_tokens=5))
    assert (text_of(exact), finish_of(exact)) == ("one two three four five", "stop")


@pytest.mark.anyio
async def test_mock_answer_cut_by_max_tokens_makes_no_tool_call() -> None:
    provider = mock(MockStep(text="let me look", tool_calls=(("get_weather", {"city": "Oslo"}),)))
    events = await events_of(provider, ask(max_tokens=1, tools=(WEATHER,)))
    assert (text_of(events), calls_of(events), finish_of(events)) == ("let", [], "length")


@pytest.mark.anyio
async def test_mock_stop_sequence_cuts_at_the_earliest_stop() -> None:
    provider = mock(MockStep(text="alpha beta. END gamma STOP delta", tool_calls=(("clock", {}),)))
    events = await events_of(provider, ask(stop=("STOP", "END")))
    assert text_of(events) == "alpha beta. "
    assert finish_of(events) == "stop"
    assert calls_of(events) == []
    assert Usage(prompt_tokens=1, completion_tokens=2) in events
    unmatched = await events_of(provider, ask(stop=("nowhere",)))
    assert text_of(unmatched) == "alpha beta. END gamma STOP delta"
    assert finish_of(unmatched) == "tool_calls"


@pytest.mark.anyio
@pytest.mark.parametrize("response_format", [JSON_OBJECT, JSON_SCHEMA])
async def test_mock_json_reply(response_format: dict[str, Any]) -> None:
    plain = await events_of(mock(MockStep(text="hello there")), ask(response_format=response_format))
    assert json.loads(text_of(plain)) == {"text": "hello there"}
    assert finish_of(plain) == "stop"
    already = '{"answer": "42"}'
    scripted = await events_of(mock(MockStep(text=already)), ask(response_format=response_format))
    assert text_of(scripted) == already


@pytest.mark.anyio
async def test_mock_tool_choice_none_suppresses_scripted_calls() -> None:
    provider = mock(MockStep(text="checking", tool_calls=(("get_weather", {"city": "Oslo"}),)))
    request = ask(tools=(WEATHER,), tool_choice="none")
    assert provider.unsupported(request) is None
    events = await events_of(provider, request)
    assert (text_of(events), calls_of(events), finish_of(events)) == ("checking", [], "stop")
    auto = await events_of(provider, ask(tools=(WEATHER,), tool_choice="auto"))
    assert [c.name for c in calls_of(auto)] == ["get_weather"]
    assert finish_of(auto) == "tool_calls"


@pytest.mark.anyio
async def test_mock_named_tool_choice_keeps_that_tools_calls() -> None:
    provider = mock(MockStep(tool_calls=(("clock", {}), ("get_weather", {"city": "Oslo"}))))
    request = ask(tools=(WEATHER, CLOCK), tool_choice=NAMED)
    assert provider.unsupported(request) is None
    events = await events_of(provider, request)
    assert [(c.name, c.arguments) for c in calls_of(events)] == [("get_weather", {"city": "Oslo"})]
    assert finish_of(events) == "tool_calls"


@pytest.mark.parametrize("choice", ["required", NAMED])
def test_mock_never_invents_a_forced_call(choice: ToolChoice) -> None:
    no_call = mock(MockStep(text="no tools here"))
    assert no_call.unsupported(ask(tools=(WEATHER,), tool_choice=choice)) == "tool_choice"
    other_call = mock(MockStep(tool_calls=(("clock", {}),)))
    expected = None if choice == "required" else "tool_choice"
    assert other_call.unsupported(ask(tools=(WEATHER, CLOCK), tool_choice=choice)) == expected


@pytest.mark.anyio
async def test_mock_accepts_sampling_options_without_changing_the_reply() -> None:
    provider = mock(MockStep(text="fixed reply"))
    request = ask(seed=3, top_p=0.1, presence_penalty=1.0, frequency_penalty=-1.0, temperature=2.0)
    assert provider.unsupported(request) is None
    events = await events_of(provider, request)
    assert (text_of(events), finish_of(events)) == ("fixed reply", "stop")
