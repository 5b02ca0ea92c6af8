"""Issue 15, end to end: a request that does not stream (`/query`, `/v1/chat/completions` without `stream`) makes
non-streaming upstream calls — tool loop included — and a client that goes away still cancels the upstream call.
A real `specai server` over TLS, auth off, each vendor faked on loopback (tests/fakes.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from live import ServerProcess, make_home

from fakes import FakeAnthropic, FakeOllama, FakeOpenAI, FakeToolCall, FakeUpstream, Turn

pytestmark = pytest.mark.live

CONFIG = """\
[agents.oa]
model_provider = "openai"
model_name = "gpt-fake"
base_url = "@OPENAI@"
api_key_source = "sk-test"
allowed_tools = ["calculator"]

[agents.claude]
model_provider = "anthropic"
model_name = "claude-fake"
base_url = "@ANTHROPIC@"
api_key_source = "sk-ant-test"
allowed_tools = ["calculator"]

[agents.llama]
model_provider = "ollama"
model_name = "llama-fake"
base_url = "@OLLAMA@"
allowed_tools = ["calculator"]
"""
AGENTS = ("oa", "claude", "llama")
CALC = FakeToolCall("calculator", {"expression": "6*7"})
TOKENS_200 = tuple(f" w{i}" for i in range(200))


@dataclass
class Live:
    proc: ServerProcess
    fakes: dict[str, FakeUpstream]
    http: httpx.Client

    def script(self, agent: str, turns: list[Turn], delay: float = 0.0) -> FakeUpstream:
        fake = self.fakes[agent]
        with fake._lock:
            fake.turns = turns
            fake._chats = 0
            fake.requests.clear()
            fake.completed = 0
            fake.disconnects = 0
        fake.delay = delay
        fake.finished.clear()
        fake.disconnected.clear()
        return fake


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    fakes: dict[str, FakeUpstream] = {
        "oa": FakeOpenAI().start(),
        "claude": FakeAnthropic().start(),
        "llama": FakeOllama().start(),
    }
    base: Path = tmp_path_factory.mktemp("whole")
    home = make_home(base)
    config = (
        CONFIG.replace("@OPENAI@", fakes["oa"].base_url)
        .replace("@ANTHROPIC@", fakes["claude"].base_url)
        .replace("@OLLAMA@", fakes["llama"].base_url)
    )
    (home / "spec-ai.config.toml").write_text(config)
    proc = ServerProcess(home)
    try:
        proc.start()
        with proc.client() as http:
            yield Live(proc, fakes, http)
    finally:
        proc.stop()
        for fake in fakes.values():
            fake.stop()


def _streamed(fake: FakeUpstream) -> list[bool]:
    """Whether each chat request the fake received asked for a stream (Ollama streams unless told not to)."""
    if isinstance(fake, FakeOllama):
        return [r.body.get("stream") is not False for r in fake.chat_requests]
    return [bool(r.body.get("stream")) for r in fake.chat_requests]


@pytest.mark.parametrize("agent", AGENTS)
def test_query_runs_its_tools_over_non_streaming_calls(live: Live, agent: str) -> None:
    fake = live.script(agent, [Turn(tool_calls=[CALC]), Turn(tokens=("It", " is", " 42."))])
    response = live.http.post("/query", json={"message": "6*7?", "agent": agent}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] == "It is 42."
    assert [(c["name"], c["success"]) for c in body["tool_calls"]] == [("calculator", True)]
    assert json.loads(body["tool_calls"][0]["output"])["result"] == 42
    assert body["metadata"]["usage"]["completion_tokens"] == 3
    assert _streamed(fake) == [False, False]


@pytest.mark.parametrize("agent", AGENTS)
def test_v1_without_stream_makes_one_non_streaming_call_and_with_stream_a_streaming_one(
    live: Live, agent: str
) -> None:
    fake = live.script(agent, [Turn(tokens=("Hello", " there."))])
    chat = {"model": agent, "messages": [{"role": "user", "content": "Hi"}]}
    whole = live.http.post("/v1/chat/completions", json=chat, timeout=30)
    assert whole.status_code == 200, whole.text
    assert whole.json()["choices"][0]["message"]["content"] == "Hello there."
    assert whole.json()["choices"][0]["finish_reason"] == "stop"
    streamed = live.http.post("/v1/chat/completions", json={**chat, "stream": True}, timeout=30)
    assert streamed.status_code == 200
    assert "Hello" in streamed.text
    assert streamed.text.endswith("data: [DONE]\r\n\r\n")
    assert _streamed(fake) == [False, True]


@pytest.mark.parametrize("path", ["/query", "/v1/chat/completions"])
def test_a_client_that_goes_away_cancels_the_non_streaming_upstream_call(live: Live, path: str) -> None:
    fake = live.script("oa", [Turn(tokens=TOKENS_200)], delay=0.05)  # a whole answer in 10 s
    body = (
        {"message": "Count", "agent": "oa"}
        if path == "/query"
        else {"model": "oa", "messages": [{"role": "user", "content": "Count"}]}
    )
    with pytest.raises(httpx.ReadTimeout):
        live.http.post(path, json=body, timeout=httpx.Timeout(30, read=1.0))
    gone_at = time.monotonic()
    assert fake.wait_disconnect(5.0), "the upstream never saw the request being cancelled"
    assert time.monotonic() - gone_at < 5.0
    assert fake.completed == 0
    assert _streamed(fake) == [False]
    assert live.http.get("/health", timeout=10).status_code == 200  # the server carries on
    assert "Traceback" not in live.proc.text()
