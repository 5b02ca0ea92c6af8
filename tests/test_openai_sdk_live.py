"""Issue 11's acceptance for `/v1`: a real `specai server` (auth on, real TLS) driven by the official `openai` SDK over
a context that trusts the server's certificate file, and read by a strict SSE client (`httpx-sse`)."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
import httpx_sse
import openai
import pytest
from live import ServerProcess, add_user, make_home

pytestmark = pytest.mark.live

SCRIPTED = "Sunny and 21 C in Paris."
CONFIG = f"""
[auth]
enabled = true
[agents.default]
[agents.weather]
mock_script = [
  {{tool_call = {{name = "get_weather", arguments = {{city = "Paris"}}}}}},
  {{text = "{SCRIPTED}"}},
]
"""
HI: list[Any] = [{"role": "user", "content": "Hi"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
MOCK_REPLY = "This is a mock response from the test provider."


@dataclass
class Served:
    """The server, the certificate file a client trusts, alice's API key (scope write) and bob's login token."""

    server: ServerProcess
    context: ssl.SSLContext
    key: str
    bob: str

    def sdk(self, api_key: str | None = None) -> tuple[httpx2.Client, openai.OpenAI]:
        """An openai client for the server's /v1: alice's key unless told otherwise ("" sends no Authorization)."""
        hooks: dict[str, list[Any]] = {"request": [_drop_authorization]} if api_key == "" else {}
        # the SDK's HTTP library (httpx2 since openai 3)
        http = httpx2.Client(verify=self.context, timeout=30, event_hooks=hooks)
        client = openai.OpenAI(
            base_url=f"{self.server.url}/v1", api_key=api_key or self.key, http_client=http, max_retries=0
        )
        return http, client


def _drop_authorization(request: httpx2.Request) -> None:
    """Send the SDK's request without credentials (the SDK itself refuses to run without a key)."""
    request.headers.pop("Authorization", None)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = make_home(tmp_path_factory.mktemp("openai-sdk"))
    (home / "spec-ai.config.toml").write_text(CONFIG)
    add_user(home, "alice")  # the first user: an admin
    add_user(home, "bob", "bob-pass-12", "user")
    server = ServerProcess(home).start()
    try:
        with server.client(server.login()) as client:
            made = client.post("/auth/keys", json={"name": "sdk", "scope": "write"})
        assert made.status_code == 201, made.text
        # what a user does: trust the certificate file (`specai cert pem` prints it), not a pinned fingerprint
        context = ssl.create_default_context(cafile=str(home / "tls" / "server.crt"))
        yield Served(server, context, made.json()["key"], server.login("bob", "bob-pass-12"))
    finally:
        server.stop()


def test_models_list_and_retrieve(served: Served) -> None:
    http, client = served.sdk()
    with http, client:
        assert [model.id for model in client.models.list()] == ["default", "weather"]
        model = client.models.retrieve("weather")
        assert (model.id, model.object, model.owned_by) == ("weather", "model", "specai")
        with pytest.raises(openai.NotFoundError) as caught:
            client.models.retrieve("nope")
    assert "model 'nope' not found; available: default, weather" in str(caught.value)


def test_a_whole_completion(served: Served) -> None:
    http, client = served.sdk()
    with http, client:
        completion = client.chat.completions.create(model="default", messages=HI)
    (choice,) = completion.choices
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        MOCK_REPLY,
        "stop",
    )
    assert choice.message.tool_calls is None
    assert completion.model == "default"
    assert completion.object == "chat.completion"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(MOCK_REPLY.split())
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_a_streamed_completion(served: Served) -> None:
    http, client = served.sdk()
    with http, client:
        stream = client.chat.completions.create(model="default", messages=HI, stream=True)
        with stream:
            chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == MOCK_REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)  # usage only when asked for


def test_include_usage_ends_with_the_usage_chunk(served: Served) -> None:
    http, client = served.sdk()
    with http, client:
        stream = client.chat.completions.create(
            model="default", messages=HI, stream=True, stream_options={"include_usage": True}
        )
        with stream:
            chunks = list(stream)
    *content, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == len(MOCK_REPLY.split())
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(chunk.usage is None and chunk.choices for chunk in content)
    assert content[-1].choices[0].finish_reason == "stop"


def test_max_tokens_gives_finish_reason_length(served: Served) -> None:
    http, client = served.sdk()
    with http, client:
        whole = client.chat.completions.create(model="default", messages=HI, max_tokens=3)
        stream = client.chat.completions.create(model="default", messages=HI, max_tokens=3, stream=True)
        with stream:
            chunks = list(stream)
    assert whole.choices[0].finish_reason == "length"
    assert whole.choices[0].message.content == "This is a"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_client_tool_call_and_its_follow_up(served: Served) -> None:
    http, client = served.sdk()
    with http, client:
        asked = client.chat.completions.create(
            model="weather", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER_TOOL]
        )
        (choice,) = asked.choices
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        assert choice.message.tool_calls is not None
        (call,) = choice.message.tool_calls
        assert call.type == "function"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Paris"}
        answered = client.chat.completions.create(
            model="weather",
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]  # the SDK's own round trip
                {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear", "celsius": 21}'},
            ],
            tools=[WEATHER_TOOL],
        )
    (final,) = answered.choices
    assert (final.message.content, final.finish_reason) == (SCRIPTED, "stop")
    assert final.message.tool_calls is None


def test_a_streamed_client_tool_call(served: Served) -> None:
    http, client = served.sdk()
    with http, client:
        stream = client.chat.completions.create(
            model="weather", messages=HI, tools=[WEATHER_TOOL], tool_choice="auto", stream=True
        )
        with stream:
            chunks = list(stream)
    deltas = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or ()]
    (delta,) = deltas
    assert (delta.index, delta.type) == (0, "function")
    assert delta.id
    assert delta.id.startswith("call_")
    assert delta.function is not None
    assert delta.function.name == "get_weather"
    assert json.loads(delta.function.arguments or "") == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_n_2_is_a_bad_request_naming_n(served: Served) -> None:
    http, client = served.sdk()
    with http, client, pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="default", messages=HI, n=2)
    assert caught.value.param == "n"
    assert "n must be 1" in str(caught.value)


def test_a_missing_model_is_not_found_with_specais_message(served: Served) -> None:
    http, client = served.sdk()
    with http, client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=HI)
    assert "agent 'nope' not found; available: default, weather" in str(caught.value)
    assert caught.value.code == "model_not_found"


@pytest.mark.parametrize(
    ("key", "said"),
    [
        ("", "missing bearer token"),
        ("spk_not-a-real-key", "invalid, expired or revoked API key"),
        ("not-a-token", "invalid token"),
    ],
    ids=["none", "bad-key", "garbage"],
)
def test_no_or_a_bad_key_is_an_authentication_error(served: Served, key: str, said: str) -> None:
    http, client = served.sdk(api_key=key)
    with http, client:
        with pytest.raises(openai.AuthenticationError) as caught:
            client.models.list()
        assert said in str(caught.value)
        assert caught.value.code == "unauthorized"
        with pytest.raises(openai.AuthenticationError) as caught:
            client.chat.completions.create(model="default", messages=HI)
        assert said in str(caught.value)


def test_httpx_sse_reads_the_stream(served: Served) -> None:
    body = {"model": "default", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    headers = {"Authorization": f"Bearer {served.key}"}
    with (
        httpx.Client(verify=served.context, timeout=30) as http,
        httpx_sse.connect_sse(
            http, "POST", f"{served.server.url}/v1/chat/completions", json=body, headers=headers
        ) as source,
    ):
        assert source.response.status_code == 200
        assert source.response.headers["content-type"].startswith("text/event-stream")
        data = [event.data for event in source.iter_sse()]  # raises SSEError on any other content type
    assert data[-1] == "[DONE]"
    chunks = [json.loads(item) for item in data[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == MOCK_REPLY
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0


def test_v1_runs_store_nothing_for_either_user(served: Served) -> None:
    """Completions by alice (API key) and bob (login token), whole and streamed, leave no session behind."""
    for token in (served.key, served.bob):
        http, client = served.sdk(api_key=token)
        with http, client:
            client.chat.completions.create(model="default", messages=HI)
            with client.chat.completions.create(
                model="weather", messages=HI, tools=[WEATHER_TOOL], stream=True
            ) as s:
                list(s)
    for token in (served.server.login(), served.bob):
        with served.server.client(token) as api:
            listed = api.get("/sessions")
        assert listed.status_code == 200, listed.text
        assert listed.json()["sessions"] == []
