"""The OpenAI-compatible API in process: what each request field becomes (honoured, ignored, refused with its `param`),
the roles, client-side tools and their chunks, finish reasons, honest usage, models, and OpenAI's error body on /v1
while the rest of the API keeps specai's."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

import helpers
from helpers import assert_error
from specai.agents.runtime import AgentRuntime, ClientRequest, QueryInput
from specai.config import load_settings
from specai.errors import InvalidRequestError
from specai.providers import (
    BaseProvider,
    ChatMessage,
    Finished,
    ModelEvent,
    ModelRequest,
    TextDelta,
    ToolCall,
    ToolCallRequested,
    ToolSpec,
    UpstreamError,
    Usage,
)
from specai.server.app import create_app
from specai.server.errors import openai_error
from specai.server.routes.openai import IGNORED, REFUSED

CONFIG = """
[agents.default]
[agents.weather]
mock_script = [{tool_call = {name = "get_weather", arguments = {city = "Paris"}}}, {text = "Sunny in Paris."}]
[agents.gpt]
model_provider = "openai"
api_key_source = "env:SPECAI_TEST_UNSET_KEY"
"""
HI = [{"role": "user", "content": "hi"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class Recorder(BaseProvider):
    """A model vendor stand-in: records each request, answers with the events it was given, maybe refuses one."""

    name = "recorder"

    def __init__(self, *events: ModelEvent, refuse: str | None = None, fail: bool = False) -> None:
        # the n-th request gets turns[n] (the last one repeats)
        self.turns = [events or (TextDelta("Hello"), TextDelta(" there"), Usage(4, 2), Finished("stop"))]
        self.refuse = refuse
        self.fail = fail
        self.requests: list[ModelRequest] = []

    def unsupported(self, request: ModelRequest) -> str | None:
        return self.refuse

    async def stream(self, request: ModelRequest) -> AsyncGenerator[ModelEvent, None]:
        self.requests.append(request)
        for event in self.turns[min(len(self.requests), len(self.turns)) - 1]:
            yield event
        if self.fail:
            raise UpstreamError("upstream returned 500")


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """An in-process app, auth off, with a mock agent, a scripted tool-calling one and an unavailable one."""
    (tmp_path / "spec-ai.config.toml").write_text(CONFIG)
    settings = load_settings(env={"SPECAI_HOME": str(tmp_path)}, cwd=tmp_path)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def use(client: TestClient, provider: Recorder, agent: str = "default") -> Recorder:
    """Make `agent` answer through `provider`."""
    runtime: AgentRuntime = client.app.state.specai.runtime
    runtime.agents[agent] = dataclasses.replace(runtime.agents[agent], provider=provider)
    return provider


def complete(client: TestClient, **body: Any) -> Any:
    body.setdefault("model", "default")
    body.setdefault("messages", HI)
    return client.post("/v1/chat/completions", json=body)


def assert_openai_error(response: Any, status: int, kind: str, code: str, param: str | None = None) -> str:
    """OpenAI's error body with exactly this `param`; returns the message."""
    return str(helpers.assert_openai_error(response, status, kind, code, param)["message"])


def chunks(response: Any) -> list[Any]:
    """The JSON data of each event of a /v1 stream, which must end with `[DONE]`."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    data = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


# -- the parameter table --------------------------------------------------------------------------------------------

REFUSED_BODIES: dict[str, dict[str, Any]] = {
    "n": {"n": 2},
    "logprobs": {"logprobs": True},
    "top_logprobs": {"top_logprobs": 3},
    "logit_bias": {"logit_bias": {"50256": -100}},
    "audio": {"audio": {"voice": "alloy", "format": "wav"}},
    "modalities": {"modalities": ["text", "audio"]},
    "prediction": {"prediction": {"type": "content", "content": "x"}},
    "web_search_options": {"web_search_options": {}},
    "functions": {"functions": [{"name": "f", "parameters": {}}]},
    "function_call": {"function_call": "auto"},
}


def test_every_refused_parameter_has_a_case() -> None:
    assert {param for param, _, _ in REFUSED} == set(REFUSED_BODIES)


@pytest.mark.parametrize("param", sorted(REFUSED_BODIES))
def test_a_parameter_specai_cannot_honour_is_a_400_naming_it(client: TestClient, param: str) -> None:
    recorder = use(client, Recorder())
    message = assert_openai_error(
        complete(client, **REFUSED_BODIES[param]), 400, "invalid_request_error", "invalid_request", param
    )
    assert param in message
    assert recorder.requests == []  # refused before the model was asked


def test_harmless_fields_and_unknown_ones_are_ignored(client: TestClient) -> None:
    recorder = use(client, Recorder())
    harmless = {
        "user": "u-1",
        "store": False,
        "metadata": {"k": "v"},
        "service_tier": "auto",
        "parallel_tool_calls": True,
        "n": 1,
        "logprobs": False,
        "modalities": ["text"],
        "stream_options": {"include_obfuscation": False},
        "logit_bias": {},
        "some_future_field": {"x": 1},
    }
    response = complete(client, **harmless)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Hello there"
    assert len(recorder.requests) == 1
    assert {"user", "store", "metadata", "service_tier", "parallel_tool_calls"} <= {
        name.split()[0] for name in IGNORED
    }


def test_sampling_parameters_reach_the_provider(client: TestClient) -> None:
    recorder = use(client, Recorder())
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    response = complete(
        client,
        temperature=0.3,
        max_completion_tokens=50,
        max_tokens=9,
        top_p=0.9,
        stop="END",
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
    )
    assert response.status_code == 200, response.text
    options = recorder.requests[0].options
    assert (options.temperature, options.max_tokens, options.top_p, options.stop, options.seed) == (
        0.3,
        50,  # max_completion_tokens wins over the older max_tokens
        0.9,
        ("END",),
        7,
    )
    assert (options.presence_penalty, options.frequency_penalty) == (0.5, -0.5)
    assert options.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema},
    }
    complete(client, stop=["a", "b"], response_format={"type": "json_object"}, max_tokens=5)
    options = recorder.requests[1].options
    assert (options.stop, options.response_format, options.max_tokens) == (
        ("a", "b"),
        {"type": "json_object"},
        5,
    )
    complete(client, response_format={"type": "text"})
    assert recorder.requests[2].options.response_format is None  # text is the default
    assert recorder.requests[2].options.stop == ()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_completion_tokens": -1}, "max_completion_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"tool_choice": "auto"}, "tool_choice"),  # without tools
        ({"tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "retrieval", "function": {"name": "x"}}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"n": "many"}, "n"),  # msgspec's own validation names the field too
        ({"messages": "hi"}, "messages"),
    ],
)
def test_out_of_range_values_are_a_400_naming_the_parameter(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    assert_openai_error(complete(client, **body), 400, "invalid_request_error", "invalid_request", param)


def test_a_missing_required_field_is_named(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"messages": HI})
    message = assert_openai_error(response, 400, "invalid_request_error", "invalid_request", "model")
    assert "model" in message


def test_a_parameter_the_provider_cannot_honour_is_a_400_naming_it(client: TestClient) -> None:
    recorder = use(client, Recorder(refuse="seed"))
    message = assert_openai_error(
        complete(client, seed=1, stream=True), 400, "invalid_request_error", "invalid_request", "seed"
    )
    assert message == "seed is not supported by agent 'default' (provider mock)"
    assert recorder.requests == []


# -- messages and roles ---------------------------------------------------------------------------------------------


def test_roles_reach_the_provider_with_developer_as_system(client: TestClient) -> None:
    recorder = use(client, Recorder())
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "kind."}]},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Again"}]},
    ]
    assert complete(client, messages=messages).status_code == 200
    sent = [(m.role, m.content) for m in recorder.requests[0].messages]
    assert sent == [
        ("system", "Be brief."),
        ("system", "Be kind."),
        ("user", "Hi"),
        ("assistant", "Hello."),
        ("user", "Again"),
    ]


def test_a_tool_result_is_passed_on_with_its_tool_name(client: TestClient) -> None:
    recorder = use(client, Recorder())
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
    }
    messages = [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rain"},
    ]
    assert complete(client, messages=messages, tools=[WEATHER_TOOL]).status_code == 200
    sent = recorder.requests[0].messages
    assert sent[1] == ChatMessage("assistant", "", (ToolCall("call_1", "get_weather", {"city": "Oslo"}),))
    assert sent[2] == ChatMessage("tool", "rain", tool_call_id="call_1", name="get_weather")


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}],
            "messages[0].content",
        ),
        (
            [
                {"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_audio"}]},
            ],
            "messages[1].content",
        ),
        ([{"role": "user", "content": [{"type": "file", "file": {}}]}], "messages[0].content"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": "a"}, {"role": "tool", "content": "r"}], "messages[1].tool_call_id"),
        (
            [{"role": "user", "content": "a"}, {"role": "tool", "tool_call_id": "nobody", "content": "r"}],
            "messages[1].tool_call_id",
        ),
        (
            [
                {"role": "user", "content": "a"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c", "content": "r"},
            ],
            "messages[1].tool_calls[0].function.arguments",
        ),
        ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "messages"),
        ([], "messages"),
    ],
)
def test_messages_specai_cannot_pass_on_are_refused_never_dropped(
    client: TestClient, messages: list[Any], param: str
) -> None:
    assert_openai_error(
        complete(client, messages=messages), 400, "invalid_request_error", "invalid_request", param
    )


# -- client-side tools ----------------------------------------------------------------------------------------------


def test_client_tools_replace_the_agents_own_and_tool_choice_is_passed_on(client: TestClient) -> None:
    recorder = use(client, Recorder())
    choice = {"type": "function", "function": {"name": "get_weather"}}
    assert complete(client, tools=[WEATHER_TOOL], tool_choice=choice).status_code == 200
    request = recorder.requests[0]
    assert request.tools == (
        ToolSpec("get_weather", "The weather in a city", WEATHER_TOOL["function"]["parameters"]),  # type: ignore[index]
    )
    assert request.tool_choice == choice
    assert complete(client).status_code == 200  # without tools: the agent's own, on the server
    own = {tool.spec.name for tool in client.app.state.specai.runtime.agents["default"].tools}
    assert own
    offered = {spec.name for spec in recorder.requests[1].tools}
    assert offered  # the tools usable without a session (no graph)
    assert offered <= own
    assert recorder.requests[1].tool_choice is None


def test_a_client_tool_call_comes_back_as_tool_calls(client: TestClient) -> None:
    response = complete(client, model="weather", tools=[WEATHER_TOOL])
    assert response.status_code == 200, response.text
    (choice,) = response.json()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert set(call) == {"id", "type", "function"}
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    follow_up = [
        *HI,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny, 21 C"},
    ]
    answer = complete(client, model="weather", tools=[WEATHER_TOOL], messages=follow_up)
    assert answer.status_code == 200, answer.text
    (choice,) = answer.json()["choices"]
    assert (choice["message"], choice["finish_reason"]) == (
        {"role": "assistant", "content": "Sunny in Paris."},
        "stop",
    )


def test_a_streamed_client_tool_call_is_tool_call_deltas(client: TestClient) -> None:
    use(
        client,
        Recorder(
            TextDelta("Let me look."),
            ToolCallRequested(ToolCall("call_a", "get_weather", {"city": "Oslo"})),
            ToolCallRequested(ToolCall("call_b", "get_weather", {"city": "Rome"})),
            Finished("stop"),  # as Ollama says it: specai reports tool_calls
        ),
    )
    events = chunks(complete(client, tools=[WEATHER_TOOL], stream=True))
    for event in events:
        assert set(event) == {"id", "object", "created", "model", "choices"}, event
        assert event["object"] == "chat.completion.chunk"
        assert event["model"] == "default"
        assert event["id"].startswith("chatcmpl-")
    deltas = [event["choices"][0]["delta"] for event in events]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"content": "Let me look."}
    assert deltas[2:4] == [
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ]
        },
        {
            "tool_calls": [
                {
                    "index": 1,
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ]
        },
    ]
    assert deltas[4] == {}
    assert [event["choices"][0]["finish_reason"] for event in events] == [None] * 4 + ["tool_calls"]


# -- finish reasons and usage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "expected"),
    [("length", "length"), ("stop", "stop"), (None, "stop"), ("content_filter", "content_filter")],
)
def test_the_finish_reason_is_the_providers(client: TestClient, reason: str | None, expected: str) -> None:
    use(client, Recorder(TextDelta("cut"), Finished(reason)))
    whole = complete(client)
    assert whole.json()["choices"][0]["finish_reason"] == expected
    streamed = chunks(complete(client, stream=True))
    assert streamed[-1]["choices"][0]["finish_reason"] == expected


def test_max_tokens_cuts_the_mock_with_finish_reason_length(client: TestClient) -> None:
    whole = complete(client, max_tokens=2).json()
    (choice,) = whole["choices"]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "This is"
    assert whole["usage"]["completion_tokens"] == 2


def test_usage_is_the_summed_real_counts_or_null(client: TestClient) -> None:
    recorder = use(client, Recorder())
    assert complete(client).json()["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    recorder.turns = [(TextDelta("no counts"), Finished("stop"))]
    body = complete(client).json()
    assert "usage" in body
    assert body["usage"] is None  # never invented zeros


def test_include_usage_sends_a_last_usage_chunk(client: TestClient) -> None:
    recorder = use(client, Recorder())
    events = chunks(complete(client, stream=True, stream_options={"include_usage": True}))
    *content, last = events
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert all(event["usage"] is None for event in content)
    assert content[-1]["choices"][0]["finish_reason"] == "stop"
    without = chunks(complete(client, stream=True))
    assert all("usage" not in event for event in without)
    assert all(event["choices"] for event in without)
    recorder.turns = [(TextDelta("no counts"), Finished("stop"))]
    last = chunks(complete(client, stream=True, stream_options={"include_usage": True}))[-1]
    assert last["choices"] == []
    assert last["usage"] is None  # the vendor counted nothing: no invented zeros


def test_a_stream_that_fails_ends_with_an_openai_error_then_done(client: TestClient) -> None:
    use(client, Recorder(TextDelta("par"), fail=True))
    events = chunks(complete(client, stream=True))
    assert events[1]["choices"][0]["delta"] == {"content": "par"}
    assert events[-1] == {
        "error": {
            "message": "upstream returned 500",
            "type": "server_error",
            "param": None,
            "code": "upstream_error",
        }
    }


def test_a_whole_completion_that_fails_is_a_502_in_openai_shape(client: TestClient) -> None:
    use(client, Recorder(TextDelta("par"), fail=True))
    assert_openai_error(complete(client), 502, "server_error", "upstream_error")


# -- models ----------------------------------------------------------------------------------------------------------


def test_models_list_and_retrieve(client: TestClient) -> None:
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["default", "weather"]  # gpt has no API key: not available
    one = client.get("/v1/models/weather").json()
    assert one == {**listed["data"][1]}
    assert set(one) == {"id", "object", "created", "owned_by"}
    assert one["object"] == "model"
    for missing in ("nope", "gpt"):
        message = assert_openai_error(
            client.get(f"/v1/models/{missing}"), 404, "not_found_error", "model_not_found"
        )
        assert f"'{missing}'" in message
        assert "default, weather" in message


def test_a_missing_model_is_a_404_with_specais_message(client: TestClient) -> None:
    message = assert_openai_error(complete(client, model="nope"), 404, "not_found_error", "model_not_found")
    assert message == "agent 'nope' not found; available: default, gpt, weather"
    assert_openai_error(
        complete(client, model="nope", stream=True), 404, "not_found_error", "model_not_found"
    )


def test_an_unavailable_model_is_a_503_server_error(client: TestClient) -> None:
    message = assert_openai_error(complete(client, model="gpt"), 503, "server_error", "provider_unavailable")
    assert "gpt" in message


def test_nothing_is_stored(client: TestClient) -> None:
    assert complete(client).status_code == 200
    assert complete(client, model="weather", tools=[WEATHER_TOOL], stream=True).status_code == 200
    assert client.get("/sessions").json()["sessions"] == []


# -- error shapes: OpenAI's on /v1, specai's elsewhere --------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "kind", "code"),
    [
        ("GET", "/v1/nope", 404, "not_found_error", "not_found"),
        ("DELETE", "/v1/models", 405, "invalid_request_error", "method_not_allowed"),
        ("GET", "/v1/models/a%00b", 400, "invalid_request_error", "invalid_request"),
    ],
)
def test_routing_errors_on_v1_are_openai_shaped(
    client: TestClient, method: str, path: str, status: int, kind: str, code: str
) -> None:
    assert_openai_error(client.request(method, path), status, kind, code)


def test_body_errors_on_v1_are_openai_shaped_and_the_rest_keeps_specais(client: TestClient) -> None:
    bad = b"{nope"
    assert_openai_error(
        client.post("/v1/chat/completions", content=bad), 400, "invalid_request_error", "invalid_request"
    )
    assert_error(client.post("/query", content=bad), 400, "invalid_request")
    nul = {"model": "default", "messages": [{"role": "user", "content": "a\x00b"}]}
    assert_openai_error(
        client.post("/v1/chat/completions", json=nul), 400, "invalid_request_error", "invalid_request"
    )
    assert_error(client.post("/query", json={"message": "a\x00b"}), 400, "invalid_request")
    assert_error(client.get("/nope"), 404, "not_found")


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (405, "invalid_request_error"),
        (409, "invalid_request_error"),
        (413, "invalid_request_error"),
        (415, "invalid_request_error"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "server_error"),
        (502, "server_error"),
        (503, "server_error"),
        (504, "server_error"),
    ],
)
def test_the_openai_error_type_follows_the_status(status: int, kind: str) -> None:
    body = openai_error("m", "some_code", status, "p")
    assert (body.error.type, body.error.code, body.error.param, body.error.message) == (
        kind,
        "some_code",
        "p",
        "m",
    )


# -- the runtime underneath -----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_client_tool_run_ends_at_the_call_and_the_agent_loop_keeps_its_finish_reason(
    tmp_path: Path,
) -> None:
    settings = load_settings(env={"SPECAI_HOME": str(tmp_path)}, cwd=tmp_path)
    runtime = AgentRuntime(settings)
    call = ToolCall("c1", "calculator", {"expression": "1+1"})
    recorder = Recorder(ToolCallRequested(call), Finished("tool_calls"))
    runtime.agents["default"] = dataclasses.replace(runtime.agents["default"], provider=recorder)
    spec = ToolSpec("calculator", "client-side this time", {"type": "object"})
    run = runtime.prepare_stateless(
        None,
        [ChatMessage("user", "1+1?")],
        QueryInput("-"),
        ClientRequest(tools=(spec,), tool_choice="required"),
    )
    events = [event async for event in run.events()]
    assert [e.type for e in events] == ["start", "tool_call", "end"]
    assert events[1].data == {"id": "c1", "name": "calculator", "arguments": {"expression": "1+1"}}
    assert (run.client_calls, run.finish_reason, run.tool_calls) == ([call], "tool_calls", [])
    assert len(recorder.requests) == 1  # the client runs the tool, not the server
    # the same call without client tools: the server runs its calculator, then the model answers (cut short)
    recorder.turns.append((TextDelta("It is"), Finished("length")))
    recorder.requests.clear()
    looped = runtime.prepare_stateless(None, [ChatMessage("user", "1+1?")], QueryInput("-"))
    events = [event async for event in looped.events()]
    assert [e.type for e in events] == ["start", "tool_call", "tool_result", "chunk", "end"]
    assert looped.tool_calls[0]["name"] == "calculator"
    assert looped.finish_reason == "length"
    assert looped.client_calls == []


def test_unsupported_is_asked_before_the_run_starts(tmp_path: Path) -> None:
    runtime = AgentRuntime(load_settings(env={"SPECAI_HOME": str(tmp_path)}, cwd=tmp_path))
    recorder = Recorder(refuse="response_format")
    runtime.agents["default"] = dataclasses.replace(runtime.agents["default"], provider=recorder)
    with pytest.raises(InvalidRequestError) as caught:
        runtime.prepare_stateless(
            None,
            [ChatMessage("user", "x")],
            QueryInput("-"),
            ClientRequest(response_format={"type": "json_object"}),
        )
    assert caught.value.details == {"param": "response_format"}
    assert caught.value.message == "response_format is not supported by agent 'default' (provider mock)"
    assert recorder.requests == []
