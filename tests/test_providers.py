"""Providers against local fake upstreams: streaming, history, options, tools, usage, errors, cancellation, set-up."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import pytest

from fakes import FakeAnthropic, FakeOllama, FakeOpenAI, FakeToolCall, FakeUpstream, Turn
from specai.errors import ProviderUnavailableError
from specai.providers import (
    ChatMessage,
    Finished,
    GenerationOptions,
    ModelEvent,
    ModelRequest,
    Provider,
    ProviderSpec,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    ToolSpec,
    UpstreamError,
    UpstreamTimeoutError,
    Usage,
    build_provider,
    collect,
    resolve_api_key,
)
from specai.providers.anthropic import DEFAULT_MAX_TOKENS
from specai.providers.mock import MockProvider

KEY = "sk-test-secret-0123456789"
TOKENS = [f"w{i} " for i in range(200)]
CALCULATOR = ToolSpec(
    name="calculator",
    description="Evaluate an arithmetic expression.",
    parameters={
        "type": "object",
        "properties": {"expression": {"type": "string"}},
        "required": ["expression"],
    },
)
HISTORY = (
    ChatMessage("system", "You are terse."),
    ChatMessage("user", "What is 6*7?"),
    ChatMessage("assistant", "", tool_calls=(ToolCall("call_1", "calculator", {"expression": "6*7"}),)),
    ChatMessage("tool", "42", tool_call_id="call_1", name="calculator"),
    ChatMessage("assistant", "It is 42."),
    ChatMessage("user", "And 6*8?"),
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Vendor:
    """How to reach one kind of upstream: its fake, and the ProviderSpec/env that point a provider at it."""

    name: str
    fake: type[FakeUpstream]
    api_key_source: str | None
    env: dict[str, str]

    @property
    def provider(self) -> str:
        return "openai" if self.name.startswith("openai") else self.name

    def spec(self, fake: FakeUpstream, timeout: float) -> ProviderSpec:
        return ProviderSpec(
            self.provider, base_url=fake.base_url, api_key_source=self.api_key_source, timeout=timeout
        )


VENDORS = {
    "openai": Vendor("openai", FakeOpenAI, "env:FAKE_OPENAI_KEY", {"FAKE_OPENAI_KEY": KEY}),
    "openai-compatible": Vendor("openai-compatible", FakeOpenAI, None, {}),
    "anthropic": Vendor("anthropic", FakeAnthropic, KEY, {}),
    "ollama": Vendor("ollama", FakeOllama, "env:OLLAMA_KEY", {"OLLAMA_KEY": KEY}),
}

Connect = Callable[..., Awaitable[tuple[Any, Provider]]]


@pytest.fixture(params=list(VENDORS))
def vendor(request: pytest.FixtureRequest) -> Vendor:
    return VENDORS[request.param]


@pytest.fixture
async def connect(vendor: Vendor) -> AsyncIterator[Connect]:
    """Start a fake upstream of `vendor` (kwargs configure it) and build a provider for it; both closed after."""
    opened: list[tuple[FakeUpstream, Provider]] = []

    async def _connect(timeout: float = 10.0, **fake_options: Any) -> tuple[Any, Provider]:  # noqa: ASYNC109 (the provider's timeout)
        fake = vendor.fake(**fake_options).start()
        provider = build_provider(vendor.spec(fake, timeout), env=vendor.env)
        opened.append((fake, provider))
        return fake, provider

    yield _connect
    for fake, provider in opened:
        await provider.aclose()
        fake.stop()


def ask(
    text: str = "Hi", *, temperature: float | None = None, max_tokens: int | None = None, **kw: Any
) -> ModelRequest:
    options = GenerationOptions(model="fake-model", temperature=temperature, max_tokens=max_tokens)
    return ModelRequest(messages=(ChatMessage("user", text),), options=options, **kw)


async def events_of(provider: Provider, request: ModelRequest) -> list[ModelEvent]:
    return [event async for event in provider.stream(request)]


async def wait_event(event: Any, timeout: float) -> bool:  # noqa: ASYNC109 (a thread waits, not this task)
    return bool(await anyio.to_thread.run_sync(event.wait, timeout))


# -- streaming --------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_stream_yields_tokens_as_the_upstream_produces_them(connect: Connect) -> None:
    fake, provider = await connect(tokens=TOKENS, delay=0.003)
    deltas: list[str] = []
    finished_before_first: bool | None = None
    events: list[ModelEvent] = []
    async for event in provider.stream(ask()):
        events.append(event)
        if isinstance(event, TextDelta):
            if finished_before_first is None:
                finished_before_first = fake.finished.is_set()
            deltas.append(event.text)
    assert finished_before_first is False
    assert len(deltas) >= 10
    assert "".join(deltas) == "".join(TOKENS)
    assert isinstance(events[-1], Finished)
    assert events[-1].reason == "stop"
    assert Usage(prompt_tokens=13, completion_tokens=200) in events
    assert fake.finished.is_set()
    assert fake.disconnects == 0


@pytest.mark.anyio
async def test_generate_returns_the_whole_answer(connect: Connect) -> None:
    _fake, provider = await connect(tokens=["Hello", ",", " world"])
    response = await provider.generate(ask())
    assert response.text == "Hello, world"
    assert response.tool_calls == []
    assert response.usage == Usage(prompt_tokens=13, completion_tokens=3)
    assert response.finish_reason == "stop"


@pytest.mark.anyio
async def test_api_key_reaches_the_upstream(connect: Connect, vendor: Vendor) -> None:
    fake, provider = await connect()
    await provider.generate(ask())
    auth = fake.chat_requests[0].headers.get("authorization", "")
    if vendor.name == "openai-compatible":
        assert auth == "Bearer not-needed"
    else:
        assert auth == f"Bearer {KEY}" or fake.chat_requests[0].headers.get("x-api-key") == KEY


# -- request mapping --------------------------------------------------------------------------------------------------


def _expected_openai() -> dict[str, Any]:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "calculator", "arguments": '{"expression": "6*7"}'},
    }
    return {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 6*7?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "assistant", "content": "It is 42."},
            {"role": "user", "content": "And 6*8?"},
        ]
    }


def _expected_anthropic() -> dict[str, Any]:
    return {
        "system": "You are terse.",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is 6*7?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "call_1", "name": "calculator", "input": {"expression": "6*7"}}
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "42"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "It is 42."}]},
            {"role": "user", "content": [{"type": "text", "text": "And 6*8?"}]},
        ],
    }


def _expected_ollama() -> dict[str, Any]:
    call = {"function": {"name": "calculator", "arguments": {"expression": "6*7"}}}
    return {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 6*7?"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "content": "42", "tool_name": "calculator"},
            {"role": "assistant", "content": "It is 42."},
            {"role": "user", "content": "And 6*8?"},
        ]
    }


EXPECTED_HISTORY = {
    "openai": _expected_openai,
    "openai-compatible": _expected_openai,
    "anthropic": _expected_anthropic,
    "ollama": _expected_ollama,
}


@pytest.mark.anyio
async def test_history_reaches_the_upstream_as_chat_messages(connect: Connect, vendor: Vendor) -> None:
    fake, provider = await connect()
    await provider.generate(ModelRequest(messages=HISTORY, options=GenerationOptions(model="fake-model")))
    body = fake.last_body
    assert body["model"] == "fake-model"
    for key, value in EXPECTED_HISTORY[vendor.name]().items():
        assert body[key] == value, key


@pytest.mark.anyio
async def test_temperature_and_max_tokens_reach_the_upstream(connect: Connect, vendor: Vendor) -> None:
    fake, provider = await connect(tokens=TOKENS[:20])
    response = await provider.generate(ask(temperature=0.25, max_tokens=7))
    body = fake.last_body
    if vendor.fake is FakeOpenAI:
        assert (body["temperature"], body["max_tokens"]) == (0.25, 7)
        assert response.finish_reason == "length"
    elif vendor.fake is FakeAnthropic:  # the API version the SDK speaks rejects sampling parameters
        assert body["max_tokens"] == 7
        assert "temperature" not in body
        assert response.finish_reason == "length"
    else:
        assert body["options"] == {"temperature": 0.25, "num_predict": 7}
        assert response.finish_reason == "length"
    assert response.text == "".join(TOKENS[:7])


@pytest.mark.anyio
async def test_unset_options_are_left_out(connect: Connect, vendor: Vendor) -> None:
    fake, provider = await connect()
    await provider.generate(ask())
    body = fake.last_body
    assert "temperature" not in body
    assert "top_p" not in body
    if vendor.fake is FakeAnthropic:
        assert body["max_tokens"] == DEFAULT_MAX_TOKENS
    else:
        assert "max_tokens" not in body
        assert "options" not in body
    assert not body.get("tools")


def test_anthropic_temperature_is_logged_once_not_sent(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with FakeAnthropic() as fake:
            provider = build_provider(ProviderSpec("anthropic", base_url=fake.base_url, api_key_source=KEY))
            try:
                for _ in range(2):
                    assert (await provider.generate(ask(temperature=0.5))).text
            finally:
                await provider.aclose()
            assert all("temperature" not in r.body for r in fake.chat_requests)

    anyio.run(main)
    assert [r.message for r in caplog.records].count(
        "anthropic: temperature is not sent; the Messages API version this SDK speaks rejects it"
    ) == 1


# -- tools ------------------------------------------------------------------------------------------------------------


def _sent_tools(vendor: Vendor, body: dict[str, Any]) -> list[dict[str, Any]]:
    if vendor.fake is FakeAnthropic:
        return [
            {"name": t["name"], "description": t["description"], "parameters": t["input_schema"]}
            for t in body["tools"]
        ]
    assert all(t["type"] == "function" for t in body["tools"])
    return [t["function"] for t in body["tools"]]


@pytest.mark.anyio
async def test_tool_call_round_trip(connect: Connect, vendor: Vendor) -> None:
    call = FakeToolCall("calculator", {"expression": "6*7"})
    fake, provider = await connect(turns=[Turn(tool_calls=[call]), Turn(tokens=["It is", " 42."])])
    first = await events_of(provider, ask("What is 6*7?", tools=(CALCULATOR,)))
    requested = [e.call for e in first if isinstance(e, ToolCallRequested)]
    assert [(c.name, c.arguments) for c in requested] == [("calculator", {"expression": "6*7"})]
    assert requested[0].id
    assert isinstance(first[-1], Finished)
    assert first[-1].reason == "tool_calls"
    sent = _sent_tools(vendor, fake.last_body)
    assert sent == [
        {"name": "calculator", "description": CALCULATOR.description, "parameters": CALCULATOR.parameters}
    ]

    follow_up = ModelRequest(
        messages=(
            ChatMessage("user", "What is 6*7?"),
            ChatMessage("assistant", "", tool_calls=tuple(requested)),
            ChatMessage("tool", "42", tool_call_id=requested[0].id, name="calculator"),
        ),
        options=GenerationOptions(model="fake-model"),
        tools=(CALCULATOR,),
    )
    assert (await provider.generate(follow_up)).text == "It is 42."
    assert len(fake.chat_requests) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", ["openai", "anthropic"], indirect=True)
async def test_streamed_tool_arguments_that_are_not_json_come_back_raw(connect: Connect) -> None:
    _fake, provider = await connect(
        turns=[Turn(tool_calls=[FakeToolCall("calculator", '{"expression": "6*')])]
    )
    response = await collect(provider.stream(ask(tools=(CALCULATOR,))))
    assert [c.arguments for c in response.tool_calls] == [{"_raw": '{"expression": "6*'}]


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", ["openai"], indirect=True)
async def test_whole_answer_tool_arguments_that_are_not_json_come_back_raw(connect: Connect) -> None:
    # (Anthropic sends a whole answer's tool input as a JSON object, never as text)
    _fake, provider = await connect(
        turns=[Turn(tool_calls=[FakeToolCall("calculator", '{"expression": "6*')])]
    )
    response = await provider.generate(ask(tools=(CALCULATOR,)))
    assert [c.arguments for c in response.tool_calls] == [{"_raw": '{"expression": "6*'}]
    assert response.finish_reason == "tool_calls"


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", ["openai", "anthropic", "ollama"], indirect=True)
async def test_several_tool_calls_keep_their_order(connect: Connect) -> None:
    calls = [FakeToolCall("calculator", {"expression": "1+1"}), FakeToolCall("current_time", {})]
    _fake, provider = await connect(turns=[Turn(tokens=["Let me check."], tool_calls=calls)])
    response = await provider.generate(ask(tools=(CALCULATOR,)))
    assert response.text == "Let me check."
    assert [(c.name, c.arguments) for c in response.tool_calls] == [
        ("calculator", {"expression": "1+1"}),
        ("current_time", {}),
    ]
    assert len({c.id for c in response.tool_calls}) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", ["openai-compatible"], indirect=True)
async def test_tool_calls_without_ids_get_unique_ones(connect: Connect) -> None:
    calls = [
        FakeToolCall("calculator", {"expression": "1"}, id=""),
        FakeToolCall("calculator", {"expression": "2"}, id=""),
    ]
    _fake, provider = await connect(turns=[Turn(tool_calls=calls)])
    first = await provider.generate(ask(tools=(CALCULATOR,)))
    second = await provider.generate(ask(tools=(CALCULATOR,)))
    assert [c.arguments for c in first.tool_calls] == [{"expression": "1"}, {"expression": "2"}]
    ids = [c.id for c in first.tool_calls + second.tool_calls]
    assert len(set(ids)) == 4
    assert all(i.startswith("call_") for i in ids)


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", ["anthropic"], indirect=True)
async def test_anthropic_thinking_goes_back_with_its_tool_call(connect: Connect) -> None:
    call = FakeToolCall("calculator", {"expression": "6*7"}, id="toolu_1")
    fake, provider = await connect(
        turns=[Turn(thinking="I should compute.", tool_calls=[call]), Turn(tokens=["42"])]
    )
    first = await provider.generate(ask(tools=(CALCULATOR,)))
    assert first.text == ""  # thinking is not part of the answer
    follow_up = ModelRequest(
        messages=(
            ChatMessage("user", "Hi"),
            ChatMessage("assistant", "", tool_calls=tuple(first.tool_calls)),
            ChatMessage("tool", "42", tool_call_id="toolu_1", name="calculator"),
        ),
        options=GenerationOptions(model="fake-model"),
        tools=(CALCULATOR,),
    )
    assert (await provider.generate(follow_up)).text == "42"
    assistant = fake.last_body["messages"][1]
    assert assistant["content"][0] == {
        "type": "thinking",
        "thinking": "I should compute.",
        "signature": "sig-fake",
    }
    assert assistant["content"][1]["type"] == "tool_use"


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", ["openai-compatible"], indirect=True)
async def test_server_that_ignores_include_usage(connect: Connect) -> None:
    fake, provider = await connect(report_usage=False)
    response = await collect(provider.stream(ask()))
    assert fake.last_body["stream_options"] == {"include_usage": True}
    assert response.text
    assert response.usage is None
    assert response.finish_reason == "stop"
    whole = await provider.generate(ask())  # a whole answer without `usage`
    assert (whole.text, whole.usage, whole.finish_reason) == (response.text, None, "stop")


# -- whole answers ----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_generate_makes_one_non_streaming_call(connect: Connect, vendor: Vendor) -> None:
    call = FakeToolCall("calculator", {"expression": "6*7"})
    fake, provider = await connect(turns=[Turn(tokens=["Let", " me", " see."], tool_calls=[call])])
    response = await provider.generate(ask(tools=(CALCULATOR,)))
    body = fake.last_body
    assert body.get("stream") in (None, False)  # Ollama streams unless told `"stream": false`
    if vendor.fake is FakeOllama:
        assert body["stream"] is False
    assert "stream_options" not in body
    assert len(fake.chat_requests) == 1
    assert response.text == "Let me see."
    assert [(c.name, c.arguments) for c in response.tool_calls] == [("calculator", {"expression": "6*7"})]
    assert response.tool_calls[0].id
    assert response.usage == Usage(prompt_tokens=13, completion_tokens=3)
    assert response.finish_reason == "tool_calls"


@pytest.mark.anyio
async def test_generate_and_stream_give_the_same_answer(connect: Connect) -> None:
    _fake, provider = await connect(tokens=TOKENS[:20])
    streamed = await collect(provider.stream(ask(max_tokens=5)))
    whole = await provider.generate(ask(max_tokens=5))
    assert (whole.text, whole.usage, whole.finish_reason) == (streamed.text, streamed.usage, "length")
    assert whole.text == "".join(TOKENS[:5])


@pytest.mark.anyio
async def test_generate_of_a_dropped_connection_is_an_upstream_error(connect: Connect) -> None:
    _fake, provider = await connect(tokens=TOKENS[:10], drop_after=3)
    with pytest.raises(UpstreamError) as info:
        await provider.generate(ask())
    assert info.value.code == "upstream_error"
    assert "\n" not in info.value.message


@pytest.mark.anyio
async def test_cancelling_generate_disconnects_the_upstream(connect: Connect) -> None:
    fake, provider = await connect(tokens=TOKENS, delay=0.02)  # a whole answer in 4 s
    with anyio.move_on_after(0.5):
        await provider.generate(ask())
    assert await wait_event(fake.disconnected, 2)
    assert not fake.finished.is_set()
    assert fake.completed == 0


# -- errors -----------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 429, 401])
async def test_upstream_http_errors_map_to_upstream_error(
    connect: Connect, vendor: Vendor, status: int
) -> None:
    fake, provider = await connect(status=status, error_message=f"boom\nwith the key {KEY} inside")
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        await provider.generate(ask())
    error = info.value
    assert time.monotonic() - started < 5
    assert not isinstance(error, UpstreamTimeoutError)
    assert (error.code, error.status) == ("upstream_error", 502)
    assert error.details == {"upstream_status": status}
    assert "\n" not in error.message
    if vendor.name != "openai-compatible":  # the provider holds KEY: it never shows it
        assert KEY not in error.message
    assert len(fake.chat_requests) == 1  # no silent retries
    if status == 401:
        assert error.message.startswith("upstream rejected the API key")
    elif status == 429:
        assert "429" in error.message
        assert "boom" in error.message
    else:
        assert "HTTP 500" in error.message
        assert "boom" in error.message


@pytest.mark.anyio
async def test_hanging_upstream_times_out(connect: Connect) -> None:
    _fake, provider = await connect(timeout=0.5, hang=True)
    started = time.monotonic()
    with pytest.raises(UpstreamTimeoutError) as info:
        await provider.generate(ask())
    assert time.monotonic() - started < 1.5
    assert (info.value.code, info.value.status) == ("upstream_timeout", 504)
    assert "did not answer within 0.5 s" in info.value.message


@pytest.mark.anyio
async def test_stalled_stream_times_out(connect: Connect) -> None:
    _fake, provider = await connect(timeout=0.5, tokens=TOKENS[:3], delay=5)
    started = time.monotonic()
    seen: list[ModelEvent] = []
    with pytest.raises(UpstreamTimeoutError):  # noqa: PT012 (reading the stream is what raises)
        async for event in provider.stream(ask()):
            seen.append(event)
    assert time.monotonic() - started < 1.5
    assert seen == [TextDelta(TOKENS[0])]


@pytest.mark.anyio
async def test_connection_cut_mid_stream(connect: Connect) -> None:
    _fake, provider = await connect(tokens=TOKENS[:10], drop_after=3)
    seen: list[str] = []
    with pytest.raises(UpstreamError) as info:  # noqa: PT012 (reading the stream is what raises)
        async for event in provider.stream(ask()):
            if isinstance(event, TextDelta):
                seen.append(event.text)
    assert seen == TOKENS[:3]
    assert info.value.code == "upstream_error"
    assert "\n" not in info.value.message


@pytest.mark.anyio
async def test_unreachable_upstream(vendor: Vendor) -> None:
    fake = vendor.fake().start()
    base_url = fake.base_url
    fake.stop()  # nothing listens there any more
    provider = build_provider(ProviderSpec(vendor.provider, base_url=base_url, api_key_source=KEY))
    try:
        with pytest.raises(UpstreamError) as info:
            await provider.generate(ask())
    finally:
        await provider.aclose()
    assert info.value.message.startswith(f"cannot reach {base_url}")
    assert "\n" not in info.value.message
    assert KEY not in info.value.message


# -- cancellation -----------------------------------------------------------------------------------------------------


async def _read_some(stream: AsyncIterator[ModelEvent], count: int) -> None:
    seen = 0
    async for event in stream:
        seen += isinstance(event, TextDelta)
        if seen >= count:
            break


@pytest.mark.anyio
async def test_closing_the_stream_disconnects_the_upstream(connect: Connect) -> None:
    fake, provider = await connect(tokens=TOKENS, delay=0.02)
    stream = provider.stream(ask())
    await _read_some(stream, 3)
    await stream.aclose()
    assert await wait_event(fake.disconnected, 2)
    assert not fake.finished.is_set()


@pytest.mark.anyio
async def test_leaving_an_aclosing_block_disconnects_the_upstream(connect: Connect) -> None:
    fake, provider = await connect(tokens=TOKENS, delay=0.02)
    async with aclosing(provider.stream(ask())) as stream:
        await _read_some(stream, 3)
    assert await wait_event(fake.disconnected, 2)
    assert not fake.finished.is_set()


@pytest.mark.anyio
async def test_cancelling_the_consumer_task_disconnects_the_upstream(connect: Connect) -> None:
    fake, provider = await connect(tokens=TOKENS, delay=0.02)
    got_some = anyio.Event()

    async def consume() -> None:
        async for event in provider.stream(ask()):
            if isinstance(event, TextDelta):
                got_some.set()

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        with anyio.fail_after(5):
            await got_some.wait()
        group.cancel_scope.cancel()
    assert await wait_event(fake.disconnected, 2)
    assert not fake.finished.is_set()


@pytest.mark.anyio
async def test_provider_keeps_working_after_a_cancelled_stream(connect: Connect) -> None:
    _fake, provider = await connect(tokens=TOKENS[:30], delay=0.01)
    async with aclosing(provider.stream(ask())) as stream:
        await _read_some(stream, 2)
    assert (await provider.generate(ask())).text == "".join(TOKENS[:30])


# -- models -----------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_list_models(connect: Connect) -> None:
    _fake, provider = await connect(models=["alpha", "beta"])
    assert await provider.list_models() == ["alpha", "beta"]


@pytest.mark.anyio
async def test_list_models_failure_is_an_upstream_error(connect: Connect) -> None:
    _fake, provider = await connect(hang=True, timeout=0.3)
    with pytest.raises(UpstreamTimeoutError):
        await provider.list_models()


# -- build_provider and API keys --------------------------------------------------------------------------------------


def test_resolve_api_key_from_env() -> None:
    assert resolve_api_key("env:MY_KEY", "openai", {"MY_KEY": "abc"}) == "abc"


def test_resolve_api_key_missing_env_is_unavailable() -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        resolve_api_key("env:MY_KEY", "openai", {})
    assert "MY_KEY" in info.value.message
    assert info.value.code == "provider_unavailable"


def test_resolve_api_key_from_file_trimmed_with_tilde(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "key.txt").write_text("  sk-from-file \n")
    assert resolve_api_key("file:~/key.txt", "anthropic", {}) == "sk-from-file"


@pytest.mark.parametrize("content", [None, "  \n"])
def test_resolve_api_key_unusable_file(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "key.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ProviderUnavailableError) as info:
        resolve_api_key(f"file:{path}", "openai", {})
    assert str(path) in info.value.message


def test_resolve_api_key_literal_and_default_env() -> None:
    assert resolve_api_key("sk-literal", "openai", {}) == "sk-literal"
    assert resolve_api_key(None, "openai", {"OPENAI_API_KEY": "from-env"}) == "from-env"
    assert resolve_api_key(None, "anthropic", {"ANTHROPIC_API_KEY": "a-env"}) == "a-env"
    assert resolve_api_key(None, "ollama", {}) is None


@pytest.mark.parametrize("base_url", ["ftp://host/v1", "localhost:1234", "http://", "not a url"])
def test_build_provider_rejects_bad_base_url(base_url: str) -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        build_provider(ProviderSpec("openai", base_url=base_url, api_key_source="k"), env={})
    assert base_url in info.value.message


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (ProviderSpec("openai"), "OPENAI_API_KEY"),
        (ProviderSpec("anthropic"), "ANTHROPIC_API_KEY"),
        (ProviderSpec("anthropic", api_key_source="env:NOPE"), "NOPE"),
        (ProviderSpec("nonsense"), "unknown provider 'nonsense'"),
    ],
)
def test_build_provider_unavailable(spec: ProviderSpec, needle: str) -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        build_provider(spec, env={})
    assert needle in info.value.message


def test_build_provider_kinds() -> None:
    async def main() -> list[str]:
        providers = [
            build_provider(ProviderSpec("mock"), env={}),
            build_provider(ProviderSpec("openai", base_url="http://127.0.0.1:1/v1"), env={}),
            build_provider(ProviderSpec("openai"), env={"OPENAI_API_KEY": "k"}),
            build_provider(ProviderSpec("anthropic", api_key_source="k"), env={}),
            build_provider(ProviderSpec("ollama"), env={}),
        ]
        for provider in providers:
            await provider.aclose()
        return [p.name for p in providers]

    assert anyio.run(main) == ["mock", "openai", "openai", "anthropic", "ollama"]
    assert isinstance(build_provider(ProviderSpec("mock"), env={}), MockProvider)


def test_ollama_default_base_url_and_no_key() -> None:
    async def main() -> str:
        provider = build_provider(ProviderSpec("ollama"), env={})
        await provider.aclose()
        return str(cast(Any, provider).base_url)

    assert anyio.run(main) == "http://127.0.0.1:11434"


def test_messages_never_show_url_credentials() -> None:
    async def main() -> str:
        provider = build_provider(ProviderSpec("openai", base_url="http://user:pw@127.0.0.1:1/v1/"), env={})
        try:
            with pytest.raises(UpstreamError) as info:
                await provider.generate(ask())
        finally:
            await provider.aclose()
        return info.value.message

    message = anyio.run(main)
    assert "pw" not in message
    assert message.startswith("cannot reach http://127.0.0.1:1/v1")


def test_fake_records_json_bodies() -> None:
    """The fakes themselves: a non-streaming request works and is recorded."""
    import urllib.request

    with FakeOllama(tokens=["a", "b"]) as fake:
        request = urllib.request.Request(
            f"{fake.base_url}/api/chat",
            data=json.dumps({"model": "m", "messages": [], "stream": False}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = json.load(response)
    assert answer["message"]["content"] == "ab"
    assert answer["done"] is True
    assert fake.chat_requests[0].body["stream"] is False
