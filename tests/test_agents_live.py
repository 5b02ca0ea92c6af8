"""Issue 3 acceptance, end to end: real `specai server` processes over TLS, the real CLI and the official `openai`
SDK as clients, and the LLM vendors replaced by local fake upstreams speaking their wire formats (tests/fakes.py).

Three servers are shared per module:
- `main`: auth off, `sse_keepalive_secs = 0.3`; agents for every vendor (oa, compat, claude, llama), tool-policy
  variants (*_strict), offline scripted mock agents (calc, calc_strict) and one with a missing key (keyless).
- `failing`: auth off, `request_timeout_secs = 1`; agents whose fakes fail on demand (status, hang).
- `owned`: auth on, users alice and bob; sessions, the CLI `sessions`/`--continue`, and the OpenAI-compatible API.
Each test re-scripts the fakes it uses (`Live.script`), so the order of tests does not matter.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from live import PASSWORD, ServerProcess, add_user, cli_env, make_home, parse_sse, run_cli, sse_events

from fakes import (
    DEFAULT_TOKENS,
    FakeAnthropic,
    FakeOllama,
    FakeOpenAI,
    FakeToolCall,
    FakeUpstream,
    Turn,
)
from helpers import assert_error
from specai.identity.tls import pinned_ssl_context

pytestmark = pytest.mark.live

PROMPT = "You are terse."
TOKENS_200 = tuple(f" w{i}" for i in range(200))
REPLY_200 = "".join(TOKENS_200)
SECRET = "sk-secret-literal-0042"  # long enough to be masked in messages
MISSING_KEY_VAR = "SPECAI_TEST_MISSING_KEY"
CALC = FakeToolCall("calculator", {"expression": "6*7"})
ANSWER = ("The", " answer", " is", " 42.")
TOOL_REF = {"openai": "call_fake0", "anthropic": "toolu_fake0", "ollama": "calculator"}
NOT_ALLOWED = "tool 'calculator' is not allowed for this agent"

# -- configs (placeholders @OPENAI@, @ANTHROPIC@, @OLLAMA@ become the fakes' base URLs) -----------------------------

MAIN_CONFIG = f"""\
default_agent = "oa"

[server]
sse_keepalive_secs = 0.3

[model]
temperature = 0.5
max_tokens = 300

[agents.oa]
prompt = "{PROMPT}"
model_provider = "openai"
model_name = "gpt-fake"
base_url = "@OPENAI@"
api_key_source = "sk-test"
temperature = 0.3
max_tokens = 512

[agents.compat]
prompt = "{PROMPT}"
model_provider = "openai"
model_name = "local-model"
base_url = "@OPENAI@"

[agents.claude]
prompt = "{PROMPT}"
model_provider = "anthropic"
model_name = "claude-fake"
base_url = "@ANTHROPIC@"
api_key_source = "sk-ant-test"
temperature = 0.3
max_tokens = 512

[agents.llama]
prompt = "{PROMPT}"
model_provider = "ollama"
model_name = "llama-fake"
base_url = "@OLLAMA@"
temperature = 0.3
max_tokens = 512

[agents.oa_strict]
model_provider = "openai"
model_name = "gpt-fake"
base_url = "@OPENAI@"
api_key_source = "sk-test"
denied_tools = ["calculator"]

[agents.claude_strict]
model_provider = "anthropic"
model_name = "claude-fake"
base_url = "@ANTHROPIC@"
api_key_source = "sk-ant-test"
denied_tools = ["calculator"]

[agents.llama_strict]
model_provider = "ollama"
model_name = "llama-fake"
base_url = "@OLLAMA@"
denied_tools = ["calculator"]

[agents.calc]
model_provider = "mock"
mock_script = [
  {{ tool_call = {{ name = "calculator", arguments = {{ expression = "6*7" }} }} }},
  {{ text = "The answer is 42." }},
]

[agents.calc_strict]
model_provider = "mock"
denied_tools = ["calculator"]
mock_script = [
  {{ tool_call = {{ name = "calculator", arguments = {{ expression = "6*7" }} }} }},
  {{ text = "I may not use the calculator." }},
]

[agents.keyless]
model_provider = "openai"
model_name = "gpt-fake"
base_url = "@OPENAI@"
api_key_source = "env:{MISSING_KEY_VAR}"
"""

FAILING_CONFIG = f"""\
default_agent = "oa"

[model]
request_timeout_secs = 1

[agents.oa]
model_provider = "openai"
model_name = "gpt-fake"
base_url = "@OPENAI@"
api_key_source = "{SECRET}"

[agents.claude]
model_provider = "anthropic"
model_name = "claude-fake"
base_url = "@ANTHROPIC@"
api_key_source = "{SECRET}"

[agents.llama]
model_provider = "ollama"
model_name = "llama-fake"
base_url = "@OLLAMA@"
api_key_source = "{SECRET}"
"""

OWNED_CONFIG = f"""\
default_agent = "oa"

[auth]
enabled = true

[agents.oa]
prompt = "{PROMPT}"
model_provider = "openai"
model_name = "gpt-fake"
base_url = "@OPENAI@"
api_key_source = "sk-test"

[agents.claude]
prompt = "{PROMPT}"
model_provider = "anthropic"
model_name = "claude-fake"
base_url = "@ANTHROPIC@"
api_key_source = "sk-ant-test"

[agents.llama]
prompt = "{PROMPT}"
model_provider = "ollama"
model_name = "llama-fake"
base_url = "@OLLAMA@"
"""

VENDOR_OF_AGENT = {
    "oa": "openai",
    "compat": "openai",
    "oa_strict": "openai",
    "keyless": "openai",
    "claude": "anthropic",
    "claude_strict": "anthropic",
    "llama": "ollama",
    "llama_strict": "ollama",
}
MODEL_OF_AGENT = {"oa": "gpt-fake", "compat": "local-model", "claude": "claude-fake", "llama": "llama-fake"}


# -- the live servers ----------------------------------------------------------------------------------------------


def rescript(
    fake: FakeUpstream,
    *,
    tokens: Sequence[str] | None = None,
    turns: Sequence[Turn] | None = None,
    delay: float = 0.005,
    status: int | None = None,
    hang: bool = False,
    error_message: str | None = None,
) -> FakeUpstream:
    """Give a running fake a new script and forget what it observed so far."""
    with fake._lock:
        fake.turns = list(turns) if turns else [Turn(tokens=tuple(tokens or DEFAULT_TOKENS))]
        fake._chats = 0
        fake.requests.clear()
        fake.completed = 0
        fake.disconnects = 0
    fake.delay = delay
    fake.status = status
    fake.hang = hang
    fake.error_message = error_message
    fake.drop_after = None
    fake.finished.clear()
    fake.disconnected.clear()
    return fake


@dataclass
class Live:
    """A running server, the fakes behind its agents, and a pinned httpx client."""

    proc: ServerProcess
    fakes: dict[str, FakeUpstream]
    http: httpx.Client

    @property
    def url(self) -> str:
        return self.proc.url

    def fake(self, agent: str) -> FakeUpstream:
        return self.fakes[VENDOR_OF_AGENT[agent]]

    def script(self, agent: str, **options: Any) -> FakeUpstream:
        return rescript(self.fake(agent), **options)

    def der(self) -> bytes:
        return self.proc.der()


def start_live(base: Path, template: str, users: Sequence[str] = ()) -> Iterator[Live]:
    fakes: dict[str, FakeUpstream] = {
        "openai": FakeOpenAI().start(),
        "anthropic": FakeAnthropic().start(),
        "ollama": FakeOllama().start(),
    }
    proc: ServerProcess | None = None
    http: httpx.Client | None = None
    try:
        home = make_home(base)
        for user in users:
            add_user(home, user)
        config = (
            template.replace("@OPENAI@", fakes["openai"].base_url)
            .replace("@ANTHROPIC@", fakes["anthropic"].base_url)
            .replace("@OLLAMA@", fakes["ollama"].base_url)
        )
        (home / "spec-ai.config.toml").write_text(config)
        proc = ServerProcess(home)
        for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OLLAMA_API_KEY", MISSING_KEY_VAR):
            proc.env.pop(name, None)  # "no key" must really mean no key
        proc.start()
        http = proc.client()
        yield Live(proc, fakes, http)
    finally:
        if http is not None:
            http.close()
        if proc is not None:
            proc.stop()
        for fake in fakes.values():
            fake.stop()


@pytest.fixture(scope="module")
def main(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from start_live(tmp_path_factory.mktemp("main"), MAIN_CONFIG)


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from start_live(tmp_path_factory.mktemp("failing"), FAILING_CONFIG)


@pytest.fixture(scope="module")
def owned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    yield from start_live(tmp_path_factory.mktemp("owned"), OWNED_CONFIG, users=("alice", "bob"))


# -- SSE and wire helpers ------------------------------------------------------------------------------------------


def iter_events(
    response: httpx.Response, deadline_secs: float = 30.0
) -> Iterator[tuple[float, dict[str, Any]]]:
    """Yield (arrival time, StreamChunk) as each SSE event arrives; the SSE id is kept as `_id`.

    Blocks without data (keep-alives) are skipped here; the keep-alive test looks at them separately.
    """
    deadline = time.monotonic() + deadline_secs
    for event in sse_events(response.iter_lines()):
        assert time.monotonic() < deadline, "the stream took longer than the test's deadline"
        if event.data not in (None, ""):
            yield event.at, {"_id": event.id, **event.data}


def stream(live: Live, body: dict[str, Any], timeout: float = 30.0) -> list[dict[str, Any]]:
    """POST /stream and return all its events (status 200 asserted)."""
    with live.http.stream("POST", "/stream", json=body, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return [event for _, event in iter_events(response, timeout)]


def query(
    live: Live, body: dict[str, Any], timeout: float = 30.0, token: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return live.http.post("/query", json=body, timeout=timeout, headers=headers)


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [event["type"] for event in events]


def text_of(events: list[dict[str, Any]]) -> str:
    return "".join(event["text"] for event in events if event["type"] == "chunk")


def plain_messages(vendor: str, body: dict[str, Any]) -> list[tuple[str, str]]:
    """The conversation an upstream received, as (role, text), system prompt first."""
    if vendor == "anthropic":
        out = [("system", body["system"])] if body.get("system") else []
        for message in body["messages"]:
            content = message["content"]
            if isinstance(content, str):
                out.append((message["role"], content))
            else:
                text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
                out.append((message["role"], text))
        return out
    return [(m["role"], m.get("content") or "") for m in body["messages"]]


def offered_tools(vendor: str, body: dict[str, Any]) -> list[str]:
    tools = body.get("tools") or []
    if vendor == "anthropic":
        return [t["name"] for t in tools]
    return [t["function"]["name"] for t in tools]


def tool_exchange(vendor: str, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The assistant's tool call and the tool result as sent back to the upstream, in the vendor's format.

    Returns ({"id", "name", "arguments"}, {"ref", "content"}) and asserts the result follows the call.
    """
    messages = body["messages"]
    call: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    for index, message in enumerate(messages):
        if vendor == "anthropic":
            blocks = message["content"] if isinstance(message["content"], list) else []
            for block in blocks:
                if block.get("type") == "tool_use" and message["role"] == "assistant":
                    call = {
                        "at": index,
                        "id": block["id"],
                        "name": block["name"],
                        "arguments": block["input"],
                    }
                if block.get("type") == "tool_result" and message["role"] == "user":
                    content = block["content"]
                    if isinstance(content, list):
                        content = "".join(part.get("text", "") for part in content)
                    result = {"at": index, "ref": block["tool_use_id"], "content": content}
        elif message["role"] == "assistant" and message.get("tool_calls"):
            raw = message["tool_calls"][0]
            function = raw["function"]
            arguments = function["arguments"]
            call = {
                "at": index,
                "id": raw.get("id"),
                "name": function["name"],
                "arguments": json.loads(arguments) if isinstance(arguments, str) else arguments,
            }
        elif message["role"] == "tool":
            ref = message.get("tool_call_id") if vendor == "openai" else message.get("tool_name")
            result = {"at": index, "ref": ref, "content": message["content"]}
    assert call is not None, messages
    assert result is not None, messages
    assert call["at"] < result["at"], messages
    return call, result


def no_ansi(text: str) -> bool:
    return "\x1b" not in text


def login_token(live: Live, user: str) -> str:
    response = live.http.post("/auth/token", json={"username": user, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


# == 1. every vendor: /query, true streaming, history as chat messages =============================================

VENDOR_AGENTS = ["oa", "compat", "claude", "llama"]


@pytest.mark.parametrize("agent", VENDOR_AGENTS)
def test_query_returns_the_upstream_text(main: Live, agent: str) -> None:
    fake = main.script(agent, tokens=["Hello", " from", " ", agent, "."])
    response = query(main, {"message": "Hi", "agent": agent})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == f"Hello from {agent}."
    assert body["agent"] == agent
    assert body["session_id"]
    assert body["metadata"]["model"] == MODEL_OF_AGENT[agent]
    assert body["metadata"]["usage"] == {"prompt_tokens": 13, "completion_tokens": 5, "total_tokens": 18}
    assert "tool_calls" not in body or body["tool_calls"] == []
    assert len(fake.chat_requests) == 1
    sent = fake.chat_requests[0]
    assert sent.body["model"] == MODEL_OF_AGENT[agent]
    if agent == "oa":
        assert sent.headers["authorization"] == "Bearer sk-test"
    elif agent == "compat":
        # no api_key_source and OPENAI_API_KEY unset: works against base_url and sends no real key
        assert "sk-" not in sent.headers.get("authorization", "")
    elif agent == "claude":  # this SDK version sends the key as a bearer token; older ones used x-api-key
        key = sent.headers.get("x-api-key") or sent.headers.get("authorization", "").removeprefix("Bearer ")
        assert key == "sk-ant-test"
    else:
        assert "authorization" not in sent.headers


@pytest.mark.parametrize("agent", VENDOR_AGENTS)
def test_stream_delivers_tokens_as_the_upstream_produces_them(main: Live, agent: str) -> None:
    fake = main.script(agent, tokens=TOKENS_200, delay=0.01)
    events: list[dict[str, Any]] = []
    finished_at_first_chunk: bool | None = None
    first_at = last_at = 0.0
    with main.http.stream(
        "POST", "/stream", json={"message": "Count", "agent": agent}, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        for at, event in iter_events(response):
            if event["type"] == "chunk" and finished_at_first_chunk is None:
                finished_at_first_chunk = fake.finished.is_set()
                first_at = at
            last_at = at
            events.append(event)
    assert finished_at_first_chunk is False, "the first chunk came only after the upstream had finished"
    assert last_at - first_at > 1.0  # 200 tokens 10 ms apart: chunks were spread over the upstream's pace
    chunks = [e for e in events if e["type"] == "chunk"]
    assert len(chunks) >= 10
    assert text_of(events) == REPLY_200
    assert kinds(events)[0] == "start"
    assert kinds(events)[-1] == "end"
    assert set(kinds(events)[1:-1]) == {"chunk"}
    assert events[0]["agent"] == agent
    assert events[0]["session_id"]
    metadata = events[-1]["metadata"]
    assert metadata["model"] == MODEL_OF_AGENT[agent]
    assert metadata["usage"] == {"prompt_tokens": 13, "completion_tokens": 200, "total_tokens": 213}
    assert [e["_id"] for e in events] == [str(n) for n in range(1, len(events) + 1)]
    assert fake.finished.is_set()


@pytest.mark.parametrize("agent", VENDOR_AGENTS)
def test_history_reaches_the_upstream_as_chat_messages(main: Live, agent: str) -> None:
    vendor = VENDOR_OF_AGENT[agent]
    fake = main.script(agent, turns=[Turn(tokens=("Paris", " it", " is.")), Turn(tokens=("About", " 2M."))])
    first = query(main, {"message": "Capital of France?", "agent": agent})
    assert first.status_code == 200, first.text
    session_id = first.json()["session_id"]
    assert plain_messages(vendor, fake.chat_requests[0].body) == [
        ("system", PROMPT),
        ("user", "Capital of France?"),
    ]
    events = stream(main, {"message": "Population?", "agent": agent, "session_id": session_id})
    assert events[0]["session_id"] == session_id
    assert text_of(events) == "About 2M."
    assert len(fake.chat_requests) == 2
    assert plain_messages(vendor, fake.chat_requests[1].body) == [
        ("system", PROMPT),
        ("user", "Capital of France?"),
        ("assistant", "Paris it is."),
        ("user", "Population?"),
    ]
    stored = main.http.get(f"/sessions/{session_id}")
    assert stored.status_code == 200, stored.text
    assert [(m["role"], m["content"]) for m in stored.json()["messages"]] == [
        ("user", "Capital of France?"),
        ("assistant", "Paris it is."),
        ("user", "Population?"),
        ("assistant", "About 2M."),
    ]


# == 2. temperature and max_tokens =================================================================================


def sampling(vendor: str, body: dict[str, Any]) -> tuple[Any, Any]:
    """(temperature, max_tokens) as the upstream received them; None when absent."""
    if vendor == "ollama":
        options = body.get("options") or {}
        return options.get("temperature"), options.get("num_predict")
    return body.get("temperature"), body.get("max_tokens")


# Profile values: oa/claude/llama set temperature 0.3, max_tokens 512; compat sets neither and falls back to
# [model] temperature 0.5, max_tokens 300.
PROFILE = {"oa": (0.3, 512), "compat": (0.5, 300), "claude": (None, 512), "llama": (0.3, 512)}


@pytest.mark.parametrize("agent", VENDOR_AGENTS)
def test_profile_temperature_and_max_tokens_reach_the_upstream(main: Live, agent: str) -> None:
    vendor = VENDOR_OF_AGENT[agent]
    fake = main.script(agent)
    response = query(main, {"message": "Hi", "agent": agent})
    assert response.status_code == 200, response.text
    # The anthropic provider deliberately never sends temperature: the current Anthropic Messages API rejects
    # sampling parameters (the fake rejects them too), so only max_tokens is asserted there, and that
    # temperature is absent.
    assert sampling(vendor, fake.last_body) == PROFILE[agent]
    if vendor == "anthropic":
        assert "temperature" not in fake.last_body


@pytest.mark.parametrize("agent", VENDOR_AGENTS)
@pytest.mark.parametrize("route", ["/query", "/stream"])
def test_request_temperature_and_max_tokens_override_the_profile(main: Live, agent: str, route: str) -> None:
    vendor = VENDOR_OF_AGENT[agent]
    fake = main.script(agent, tokens=[f" t{i}" for i in range(100)])
    body = {"message": "Hi", "agent": agent, "temperature": 1.25, "max_tokens": 7}
    if route == "/query":
        response = query(main, body)
        assert response.status_code == 200, response.text
        text = response.json()["response"]
    else:
        text = text_of(stream(main, body))
    assert text == "".join(f" t{i}" for i in range(7))  # the fake honours max_tokens like the vendor
    # see the note above: temperature is never sent to anthropic
    expected_temperature = None if vendor == "anthropic" else 1.25
    assert sampling(vendor, fake.last_body) == (expected_temperature, 7)
    if vendor == "anthropic":
        assert "temperature" not in fake.last_body


# == 3. tools with policy ==========================================================================================

TOOL_AGENTS = ["oa", "claude", "llama"]


def tool_turns() -> list[Turn]:
    return [Turn(tool_calls=[CALC]), Turn(tokens=ANSWER)]


def assert_tool_events(events: list[dict[str, Any]], success: bool) -> dict[str, Any]:
    """start, tool_call, tool_result, chunk..., end, in that order; returns the tool_result."""
    order = kinds(events)
    assert order[:3] == ["start", "tool_call", "tool_result"], order
    assert order[-1] == "end", order
    assert set(order[3:-1]) == {"chunk"}, order
    call, result = events[1], events[2]
    assert call["name"] == "calculator"
    assert call["arguments"] == {"expression": "6*7"}
    assert result["name"] == "calculator"
    assert result["result"]["success"] is success
    if success:
        assert "42" in result["result"]["output"]
    else:
        assert NOT_ALLOWED in result["result"]["error"]
    return dict(result["result"])


@pytest.mark.parametrize("agent", TOOL_AGENTS)
def test_scripted_tool_call_is_executed_and_its_result_goes_back(main: Live, agent: str) -> None:
    vendor = VENDOR_OF_AGENT[agent]
    fake = main.script(agent, turns=tool_turns())
    events = stream(main, {"message": "What is 6*7?", "agent": agent})
    assert_tool_events(events, success=True)
    assert text_of(events) == "".join(ANSWER)
    assert len(fake.chat_requests) == 2
    first, second = (r.body for r in fake.chat_requests)
    assert "calculator" in offered_tools(vendor, first)
    call, result = tool_exchange(vendor, second)
    assert call["name"] == "calculator"
    assert call["arguments"] == {"expression": "6*7"}
    assert result["ref"] == TOOL_REF[vendor]
    if vendor != "ollama":
        assert call["id"] == TOOL_REF[vendor]
    assert json.loads(result["content"])["result"] == 42


@pytest.mark.parametrize("agent", TOOL_AGENTS)
def test_query_reports_tool_calls(main: Live, agent: str) -> None:
    fake = main.script(agent, turns=tool_turns())
    response = query(main, {"message": "What is 6*7?", "agent": agent})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == "".join(ANSWER)
    [call] = body["tool_calls"]
    assert call["name"] == "calculator"
    assert call["arguments"] == {"expression": "6*7"}
    assert call["success"] is True
    assert "42" in call["output"]
    assert len(fake.chat_requests) == 2


@pytest.mark.parametrize("agent", ["oa_strict", "claude_strict", "llama_strict"])
def test_denied_tool_is_refused_and_the_model_is_told(main: Live, agent: str) -> None:
    vendor = VENDOR_OF_AGENT[agent]
    fake = main.script(agent, turns=[Turn(tool_calls=[CALC]), Turn(tokens=("I", " cannot."))])
    events = stream(main, {"message": "What is 6*7?", "agent": agent})
    assert_tool_events(events, success=False)
    assert text_of(events) == "I cannot."
    first, second = (r.body for r in fake.chat_requests)
    assert "calculator" not in offered_tools(vendor, first)  # a denied tool is not even offered
    _, result = tool_exchange(vendor, second)
    assert result["ref"] == TOOL_REF[vendor]
    assert NOT_ALLOWED in result["content"]

    fake = main.script(agent, turns=[Turn(tool_calls=[CALC]), Turn(tokens=("I", " cannot."))])
    response = query(main, {"message": "What is 6*7?", "agent": agent})
    assert response.status_code == 200, response.text
    [call] = response.json()["tool_calls"]
    assert call["success"] is False
    assert NOT_ALLOWED in call["error"]


def test_mock_script_runs_the_tool_loop_offline(main: Live) -> None:
    for fake in main.fakes.values():
        rescript(fake)
    events = stream(main, {"message": "What is 6*7?", "agent": "calc"})
    assert_tool_events(events, success=True)
    assert text_of(events) == "The answer is 42."

    response = query(main, {"message": "What is 6*7?", "agent": "calc"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == "The answer is 42."
    [call] = body["tool_calls"]
    assert call["name"] == "calculator"
    assert call["success"] is True
    assert "42" in call["output"]
    assert all(not fake.requests for fake in main.fakes.values())  # no upstream involved


def test_mock_script_denied_tool_is_refused_and_the_model_is_told(main: Live) -> None:
    events = stream(main, {"message": "What is 6*7?", "agent": "calc_strict"})
    assert_tool_events(events, success=False)
    assert text_of(events) == "I may not use the calculator."
    stored = main.http.get(f"/sessions/{events[0]['session_id']}")
    assert stored.status_code == 200, stored.text
    messages = stored.json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert messages[1]["tool_calls"][0]["name"] == "calculator"
    assert NOT_ALLOWED in messages[2]["content"]  # what the model was told


# == 4. availability ===============================================================================================


def test_agents_shows_availability_provider_and_model(main: Live) -> None:
    response = main.http.get("/agents")
    assert response.status_code == 200, response.text
    agents = {a["id"]: a for a in response.json()["agents"]}
    expected = {
        "oa": ("openai", "gpt-fake"),
        "compat": ("openai", "local-model"),
        "claude": ("anthropic", "claude-fake"),
        "llama": ("ollama", "llama-fake"),
        "calc": ("mock", "mock-model"),
        "keyless": ("openai", "gpt-fake"),
    }
    for name, (provider, model) in expected.items():
        assert agents[name]["provider"] == provider, agents[name]
        assert agents[name]["model"] == model, agents[name]
        assert agents[name]["available"] is (name != "keyless"), agents[name]
    assert agents["oa"].get("default") is True
    assert "calculator" in agents["oa"]["tools"]
    assert "calculator" not in agents["oa_strict"]["tools"]
    assert agents["oa_strict"]["denied_tools"] == ["calculator"]


def test_agent_with_a_missing_key_is_unavailable_while_others_work(main: Live) -> None:
    assert "keyless" in main.proc.text()
    assert MISSING_KEY_VAR in main.proc.text()
    agents = {a["id"]: a for a in main.http.get("/agents").json()["agents"]}
    assert agents["keyless"]["available"] is False
    assert MISSING_KEY_VAR in agents["keyless"]["unavailable_reason"]

    fake = main.script("keyless")
    body = assert_error(query(main, {"message": "Hi", "agent": "keyless"}), 503, "provider_unavailable")
    assert MISSING_KEY_VAR in body["error"]
    streamed = main.http.post("/stream", json={"message": "Hi", "agent": "keyless"})
    assert MISSING_KEY_VAR in assert_error(streamed, 503, "provider_unavailable")["error"]
    assert fake.chat_requests == []

    works = query(main, {"message": "Hi", "agent": "oa"})
    assert works.status_code == 200, works.text
    assert works.json()["response"] == "".join(DEFAULT_TOKENS)


def test_cli_agents_shows_the_unavailable_agent(main: Live, client_home: Path) -> None:
    pin = ("--server", main.url, "--fingerprint", main.proc.fingerprint)
    listed = run_cli(client_home, "agents", *pin)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "keyless" in line)
    assert "openai" in row
    assert "gpt-fake" in row
    assert "no" in row
    assert MISSING_KEY_VAR in " ".join(listed.stdout.split())
    oa_row = next(line for line in listed.stdout.splitlines() if line.lstrip("│ ").startswith("oa "))
    assert "yes" in oa_row

    as_json = run_cli(client_home, "agents", "--json", *pin)
    assert as_json.returncode == 0, as_json.stderr
    agents = {a["id"]: a for a in json.loads(as_json.stdout)["agents"]}
    assert agents["keyless"]["available"] is False
    assert MISSING_KEY_VAR in agents["keyless"]["unavailable_reason"]


# == 5. upstream failures ==========================================================================================

FAIL_AGENTS = ["oa", "claude", "llama"]


@pytest.mark.parametrize("agent", FAIL_AGENTS)
@pytest.mark.parametrize("status", [500, 503, 429])
def test_upstream_error_status(failing: Live, agent: str, status: int) -> None:
    fake = failing.script(agent, status=status)
    started = time.monotonic()
    body = assert_error(query(failing, {"message": "Hi", "agent": agent}, timeout=10), 502, "upstream_error")
    assert str(status) in body["error"]
    assert "\n" not in body["error"]
    events = stream(failing, {"message": "Hi", "agent": agent}, timeout=10)
    assert kinds(events) == ["start", "error"]
    assert events[-1]["code"] == "upstream_error"
    assert str(status) in events[-1]["message"]
    assert time.monotonic() - started < 5
    assert len(fake.chat_requests) == 2  # no retries hidden behind the error


@pytest.mark.parametrize("agent", FAIL_AGENTS)
def test_upstream_timeout(failing: Live, agent: str) -> None:
    failing.script(agent, hang=True)
    started = time.monotonic()
    body = assert_error(
        query(failing, {"message": "Hi", "agent": agent}, timeout=10), 504, "upstream_timeout"
    )
    assert time.monotonic() - started < 4
    assert "1 s" in body["error"] or "timeout" in body["error"]
    started = time.monotonic()
    events = stream(failing, {"message": "Hi", "agent": agent}, timeout=10)
    assert time.monotonic() - started < 4
    assert kinds(events) == ["start", "error"]
    assert events[-1]["code"] == "upstream_timeout"


@pytest.mark.parametrize("agent", FAIL_AGENTS)
def test_rejected_key_is_reported_without_leaking_it(failing: Live, agent: str) -> None:
    failing.script(agent, status=401, error_message=f"Incorrect API key provided: {SECRET}")
    response = query(failing, {"message": "Hi", "agent": agent}, timeout=10)
    body = assert_error(response, 502, "upstream_error")
    assert "API key" in body["error"]
    assert SECRET not in response.text
    with failing.http.stream(
        "POST", "/stream", json={"message": "Hi", "agent": agent}, timeout=10
    ) as streamed:
        raw = streamed.read().decode()
    assert SECRET not in raw
    events = [event.data for event in parse_sse(raw)]
    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "upstream_error"
    assert "API key" in events[-1]["message"]


@pytest.mark.parametrize("agent", FAIL_AGENTS)
def test_upstream_error_text_never_leaks_the_key(failing: Live, agent: str) -> None:
    failing.script(agent, status=500, error_message=f"internal error while using key {SECRET}")
    response = query(failing, {"message": "Hi", "agent": agent}, timeout=10)
    assert_error(response, 502, "upstream_error")
    assert SECRET not in response.text


# == 6. a client that goes away cancels the upstream request =======================================================


@pytest.mark.parametrize("agent", TOOL_AGENTS)
def test_client_disconnect_cancels_the_upstream_request(main: Live, agent: str) -> None:
    fake = main.script(agent, tokens=TOKENS_200, delay=0.05)  # 10 s if nobody interrupts it
    chunks = 0
    with main.http.stream(
        "POST", "/stream", json={"message": "Count", "agent": agent}, timeout=30
    ) as response:
        assert response.status_code == 200
        for _, event in iter_events(response):
            if event["type"] == "chunk":
                chunks += 1
                if chunks == 3:
                    break
    # leaving the block closed the half-read response, and with it the TLS connection
    closed_at = time.monotonic()
    assert fake.wait_disconnect(3.0), "the upstream never saw the request being cancelled"
    assert time.monotonic() - closed_at < 3.0
    assert not fake.finished.is_set()
    assert fake.completed == 0
    assert chunks == 3


# == 7. keep-alive and event ids ===================================================================================


def test_keepalive_comments_during_silence_and_ids_on_every_event(main: Live) -> None:
    # An empty first token goes out at once; the visible text follows 1.5 s later (keep-alive every 0.3 s).
    main.script("oa", turns=[Turn(tokens=("", "late", " reply"))], delay=1.5)
    with main.http.stream("POST", "/stream", json={"message": "Hi", "agent": "oa"}, timeout=30) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    lines = raw.replace("\r\n", "\n").split("\n")
    assert sum(1 for line in lines if line == ": keep-alive") >= 2, raw
    blocks = list(sse_events(lines))
    data_blocks = [b for b in blocks if any(name == "data" for name, _ in b.fields)]
    assert any(b.comments for b in blocks), raw
    # A keep-alive must be a pure comment: a `data:` line (even empty) makes it an event that EventSource
    # dispatches and that JSON-decoding clients (the openai SDK among them) choke on.
    for block in blocks:
        assert not (block.comments and block.fields), f"keep-alive is not a pure comment: {block}"
    ids = []
    for block in data_blocks:
        assert block.id is not None, f"data event without an id: {block}"
        ids.append(int(block.id))
    assert ids == list(range(1, len(ids) + 1))
    events = [b.data for b in data_blocks if b.data not in (None, "")]
    assert text_of(events) == "late reply"
    assert kinds(events)[0] == "start"
    assert kinds(events)[-1] == "end"


def test_openai_sdk_stream_survives_a_keepalive(main: Live) -> None:
    main.script("oa", turns=[Turn(tokens=("", "late", " reply"))], delay=1.5)
    with (
        httpx2.Client(verify=pinned_ssl_context(main.der()), timeout=30) as http,
        openai.OpenAI(base_url=f"{main.url}/v1", api_key="unused", http_client=http, max_retries=0) as client,
    ):
        completion = client.chat.completions.create(
            model="oa", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        with completion:
            parts = [chunk.choices[0].delta.content or "" for chunk in completion if chunk.choices]
    assert "".join(parts) == "late reply"


# == 8. sessions belong to their user ==============================================================================


def sessions_of(live: Live, token: str) -> list[dict[str, Any]]:
    response = live.http.get("/sessions", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    return list(response.json()["sessions"])


def test_sessions_belong_to_their_owner(owned: Live) -> None:
    alice, bob = login_token(owned, "alice"), login_token(owned, "bob")
    as_alice = {"Authorization": f"Bearer {alice}"}
    as_bob = {"Authorization": f"Bearer {bob}"}
    fake = owned.script("oa", turns=[Turn(tokens=("Secret", " plans.")), Turn(tokens=("More", " plans."))])
    first = query(owned, {"message": "Tell me the plan", "agent": "oa"}, token=alice)
    assert first.status_code == 200, first.text
    session_id = first.json()["session_id"]
    second = query(owned, {"message": "And then?", "session_id": session_id}, token=alice)
    assert second.status_code == 200, second.text

    assert session_id in [s["id"] for s in sessions_of(owned, alice)]
    assert session_id not in [s["id"] for s in sessions_of(owned, bob)]

    calls = len(fake.chat_requests)
    assert_error(owned.http.get(f"/sessions/{session_id}", headers=as_bob), 404, "not_found")
    assert_error(owned.http.delete(f"/sessions/{session_id}", headers=as_bob), 404, "not_found")
    assert_error(query(owned, {"message": "Leak it", "session_id": session_id}, token=bob), 404, "not_found")
    streamed = owned.http.post(
        "/stream", json={"message": "Leak it", "session_id": session_id}, headers=as_bob
    )
    assert_error(streamed, 404, "not_found")
    assert len(fake.chat_requests) == calls, "the upstream was called for bob's attempts"

    shown = owned.http.get(f"/sessions/{session_id}", headers=as_alice)
    assert shown.status_code == 200, shown.text
    assert [(m["role"], m["content"]) for m in shown.json()["messages"]] == [
        ("user", "Tell me the plan"),
        ("assistant", "Secret plans."),
        ("user", "And then?"),
        ("assistant", "More plans."),
    ]
    listed = next(s for s in sessions_of(owned, alice) if s["id"] == session_id)
    assert listed["message_count"] == 4
    assert listed["agent"] == "oa"

    deleted = owned.http.delete(f"/sessions/{session_id}", headers=as_alice)
    assert deleted.status_code == 204, deleted.text
    assert_error(owned.http.get(f"/sessions/{session_id}", headers=as_alice), 404, "not_found")
    assert session_id not in [s["id"] for s in sessions_of(owned, alice)]


def test_failed_model_call_leaves_no_session_and_no_orphan_message(owned: Live) -> None:
    alice = login_token(owned, "alice")
    owned.script("oa", status=500)
    before = sessions_of(owned, alice)
    assert_error(query(owned, {"message": "Doomed", "agent": "oa"}, token=alice), 502, "upstream_error")
    with owned.http.stream(
        "POST",
        "/stream",
        json={"message": "Doomed too"},
        headers={"Authorization": f"Bearer {alice}"},
        timeout=10,
    ) as response:
        events = [e for _, e in iter_events(response, 10)]
    assert kinds(events) == ["start", "error"]
    assert sessions_of(owned, alice) == before

    # a failed turn in an existing session adds nothing to it
    owned.script("oa", tokens=["Fine."])
    ok = query(owned, {"message": "Works", "agent": "oa"}, token=alice)
    assert ok.status_code == 200, ok.text
    session_id = ok.json()["session_id"]
    owned.script("oa", status=500)
    failed = query(owned, {"message": "Fails", "session_id": session_id}, token=alice)
    assert_error(failed, 502, "upstream_error")
    shown = owned.http.get(f"/sessions/{session_id}", headers={"Authorization": f"Bearer {alice}"})
    assert [(m["role"], m["content"]) for m in shown.json()["messages"]] == [
        ("user", "Works"),
        ("assistant", "Fine."),
    ]


def test_cli_sessions_and_continue(owned: Live, client_home: Path) -> None:
    pin = ("--server", owned.url, "--fingerprint", owned.proc.fingerprint)
    login = run_cli(
        client_home, "login", *pin, "--username", "alice", "--password-stdin", input=PASSWORD + "\n"
    )
    assert login.returncode == 0, login.stderr

    fake = owned.script("oa", turns=[Turn(tokens=("First", " answer.")), Turn(tokens=("Second", " answer."))])
    first = run_cli(client_home, "query", "first question", "--agent", "oa", *pin)
    assert first.returncode == 0, first.stderr
    assert first.stdout == "First answer.\n"
    listed = run_cli(client_home, "sessions", "list", "--json", *pin)
    assert listed.returncode == 0, listed.stderr
    sessions = json.loads(listed.stdout)["sessions"]
    session_id = sessions[0]["id"]  # most recently used first
    assert session_id in first.stderr

    second = run_cli(client_home, "query", "second question", "--continue", *pin)
    assert second.returncode == 0, second.stderr
    assert second.stdout == "Second answer.\n"
    assert plain_messages("openai", fake.last_body) == [
        ("system", PROMPT),
        ("user", "first question"),
        ("assistant", "First answer."),
        ("user", "second question"),
    ]

    shown = run_cli(client_home, "sessions", "show", session_id, "--json", *pin)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["id"] == session_id
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("user", "first question"),
        ("assistant", "First answer."),
        ("user", "second question"),
        ("assistant", "Second answer."),
    ]

    removed = run_cli(client_home, "sessions", "rm", session_id, *pin)
    assert removed.returncode == 0, removed.stderr
    gone = run_cli(client_home, "sessions", "show", session_id, "--json", *pin)
    assert gone.returncode == 1
    assert len(gone.stderr.strip().splitlines()) == 1
    after = json.loads(run_cli(client_home, "sessions", "list", "--json", *pin).stdout)["sessions"]
    assert session_id not in [s["id"] for s in after]


# == 9. the official openai SDK against the OpenAI-compatible API ==================================================


def sdk(live: Live, token: str) -> tuple[httpx2.Client, openai.OpenAI]:
    http = httpx2.Client(verify=pinned_ssl_context(live.der()), timeout=30)
    return http, openai.OpenAI(base_url=f"{live.url}/v1", api_key=token, http_client=http, max_retries=0)


def test_openai_sdk_lists_the_agents(owned: Live) -> None:
    http, client = sdk(owned, login_token(owned, "alice"))
    with http, client:
        models = [model.id for model in client.models.list()]
    assert sorted(models) == ["claude", "llama", "oa"]


@pytest.mark.parametrize("agent", ["oa", "claude", "llama"])
def test_openai_sdk_streamed_completion(owned: Live, agent: str) -> None:
    tokens = tuple(f" s{i}" for i in range(40))
    fake = owned.script(agent, tokens=tokens)
    http, client = sdk(owned, login_token(owned, "alice"))
    with http, client:
        completion = client.chat.completions.create(
            model=agent, messages=[{"role": "user", "content": "Stream please"}], stream=True
        )
        with completion:
            chunks = list(completion)
    parts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(parts) >= 10
    assert "".join(parts) == "".join(tokens)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert plain_messages(VENDOR_OF_AGENT[agent], fake.last_body)[-1] == ("user", "Stream please")


def test_openai_sdk_whole_completion_sends_the_conversation(owned: Live) -> None:
    fake = owned.script("oa", tokens=["Blue", "."])
    http, client = sdk(owned, login_token(owned, "alice"))
    with http, client:
        completion = client.chat.completions.create(
            model="oa",
            messages=[
                {"role": "user", "content": "Favourite colour?"},
                {"role": "assistant", "content": "Which one?"},
                {"role": "user", "content": "Yours."},
            ],
            temperature=0.7,
            max_tokens=33,
        )
    assert completion.choices[0].message.content == "Blue."
    assert completion.model == "oa"
    assert plain_messages("openai", fake.last_body) == [
        ("system", PROMPT),
        ("user", "Favourite colour?"),
        ("assistant", "Which one?"),
        ("user", "Yours."),
    ]
    assert sampling("openai", fake.last_body) == (0.7, 33)


def test_openai_sdk_upstream_failure_is_an_api_error(owned: Live) -> None:
    owned.script("oa", status=500)
    http, client = sdk(owned, login_token(owned, "alice"))
    with http, client, pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="oa", messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 502


def test_openai_sdk_bad_token_raises_authentication_error(owned: Live) -> None:
    fake = owned.script("oa")
    http, client = sdk(owned, "not-a-valid-token")
    with http, client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        with pytest.raises(openai.AuthenticationError):
            client.chat.completions.create(model="oa", messages=[{"role": "user", "content": "Hi"}])
    assert fake.chat_requests == []


# == 10. the CLI when piped ========================================================================================


def test_cli_query_piped_streams_plain_text(main: Live, client_home: Path) -> None:
    tokens = tuple(f" p{i}" for i in range(100))
    fake = main.script("oa", tokens=("**Bold**", *tokens), delay=0.02)  # Markdown stays as typed when piped
    env = cli_env(client_home, NO_COLOR="", TERM="xterm-256color")
    args = [sys.executable, "-m", "specai", "query", "Hi", "--agent", "oa"]
    args += ["--server", main.url, "--fingerprint", main.proc.fingerprint]
    with subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=client_home,
    ) as proc:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        first = b""
        while not first and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                first = os.read(proc.stdout.fileno(), 65536)
        finished_at_first_output = fake.finished.is_set()
        rest, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert first, "the CLI printed nothing"
    assert finished_at_first_output is False, "the CLI printed only after the upstream had finished"
    stdout = (first + rest).decode()
    assert stdout == "**Bold**" + "".join(tokens) + "\n"
    assert no_ansi(stdout)


@pytest.mark.parametrize("mode", [(), ("--no-stream",)])
def test_cli_query_failing_upstream_exits_1_with_one_line(
    main: Live, client_home: Path, mode: tuple[str, ...]
) -> None:
    main.script("oa", status=500)
    pin = ("--server", main.url, "--fingerprint", main.proc.fingerprint)
    result = run_cli(client_home, "query", "Hi", "--agent", "oa", *mode, *pin, timeout=30)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    assert "500" in lines[0]
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
