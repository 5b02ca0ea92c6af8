"""`specai a2a card|send` and `specai query --a2a` against an A2A agent that is not specai: one built from the
a2a-sdk's own server pieces (DefaultRequestHandler, an echoing AgentExecutor, its Starlette routes), served by
uvicorn over TLS on loopback in its own process, with a bearer token it requires on its JSON-RPC endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from live import free_port, make_home, run_cli, wait_until, write_cert_pair

pytestmark = pytest.mark.live

TOKEN = "a2a-test-token"
EXTENSION = "https://specai.dev/a2a/ext/tls-fingerprint/v1"

AGENT = textwrap.dedent(
    """
    import sys
    import uvicorn
    from a2a.helpers.proto_helpers import new_task_from_user_message, new_text_part
    from a2a.server.agent_execution import AgentExecutor
    from a2a.server.request_handlers import DefaultRequestHandler
    from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
    from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
    from a2a.types import (
        AgentCapabilities, AgentCard, AgentExtension, AgentInterface, AgentSkill, HTTPAuthSecurityScheme,
        SecurityScheme,
    )
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse

    port, cert, key, token, claimed, requests = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]

    class Echo(AgentExecutor):
        async def execute(self, context, event_queue):
            updater = TaskUpdater(event_queue, context.task_id, context.context_id)
            if context.current_task is None:
                await event_queue.enqueue_event(new_task_from_user_message(context.message))
            await updater.start_work()
            text = context.get_user_input()
            for i, piece in enumerate(["echo: ", *text.split(" ")]):
                await updater.add_artifact([new_text_part(piece if i < 2 else " " + piece)], artifact_id="a",
                                           append=i > 0)
            await updater.complete()

        async def cancel(self, context, event_queue):
            pass

    card = AgentCard(
        name="Echo agent", description="Says it back.", version="0.1",
        supported_interfaces=[AgentInterface(url=f"https://127.0.0.1:{port}/rpc", protocol_binding="JSONRPC",
                                             protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True, extensions=[
            AgentExtension(uri="https://specai.dev/a2a/ext/tls-fingerprint/v1", params={"sha256": claimed})]),
        security_schemes={"bearer": SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(
            scheme="Bearer", bearer_format="JWT"))},
        default_input_modes=["text/plain"], default_output_modes=["text/plain"],
        skills=[AgentSkill(id="echo", name="Echo", description="Repeats the message", tags=["echo"])],
    )
    handler = DefaultRequestHandler(agent_executor=Echo(), task_store=InMemoryTaskStore(), agent_card=card)
    app = Starlette(routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, "/rpc")])

    async def guarded(scope, receive, send):
        if scope["type"] == "http":
            with open(requests, "a") as log:
                log.write(scope["path"] + " " + repr(dict(scope["headers"]).get(b"authorization")) + "\\n")
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            if scope["path"] == "/rpc" and auth != f"Bearer {token}":
                response = JSONResponse({"error": "no token", "code": "unauthorized"}, status_code=401)
                await response(scope, receive, send)
                return
        await app(scope, receive, send)

    uvicorn.run(guarded, host="127.0.0.1", port=int(port), ssl_certfile=cert, ssl_keyfile=key, log_level="warning")
    """
)


@dataclass
class Agent:
    url: str
    fingerprint: str
    requests: Path

    def seen(self) -> list[str]:
        return self.requests.read_text().splitlines() if self.requests.exists() else []


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    base = tmp_path_factory.mktemp("a2a-agent")
    pair = write_cert_pair(base)
    port = free_port()
    requests = base / "requests.log"
    output = (base / "agent.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            AGENT,
            str(port),
            str(pair.cert),
            str(pair.key),
            TOKEN,
            pair.fingerprint,
            str(requests),
        ],
        stdout=output,
        stderr=subprocess.STDOUT,
    )
    found = Agent(f"https://127.0.0.1:{port}", pair.fingerprint, requests)
    try:
        wait_until(lambda: found.seen() or _listening(port), timeout=30, what="the A2A agent to listen")
        yield found
    finally:
        process.terminate()
        process.wait(10)
        output.close()


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return make_home(tmp_path)


def test_card_is_summarised_and_pinned(agent: Agent, home: Path) -> None:
    result = run_cli(home, "a2a", "card", "--server", agent.url, "--fingerprint", agent.fingerprint)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Echo agent" in out
    assert "streaming: yes" in out
    assert f"JSONRPC 1.0  {agent.url}/rpc" in out
    assert "bearer: HTTP Bearer (JWT)" in out
    assert "echo (Echo): Repeats the message" in out
    assert f"card's TLS fingerprint: {agent.fingerprint} (matches the pinned certificate)" in out
    pins = json.loads((home / "known_servers.json").read_text())
    assert pins[agent.url] == agent.fingerprint  # pinned: the next run needs no --fingerprint
    again = run_cli(home, "a2a", "card", "--server", agent.url, "--json")
    assert again.returncode == 0, again.stderr
    raw = json.loads(again.stdout)
    assert raw["name"] == "Echo agent"
    assert raw["capabilities"]["extensions"][0] == {"uri": EXTENSION, "params": {"sha256": agent.fingerprint}}


def test_unknown_agent_is_refused_without_a_prompt(agent: Agent, home: Path) -> None:
    result = run_cli(home, "a2a", "card", "--server", agent.url)
    assert result.returncode == 5
    assert agent.fingerprint in result.stderr
    assert "Traceback" not in result.stderr


def test_send_streams_the_answer(agent: Agent, home: Path) -> None:
    result = run_cli(
        home, "a2a", "send", agent.url, "hello there", "--fingerprint", agent.fingerprint, SPECAI_TOKEN=TOKEN
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hello there\n"
    assert "context " in result.stderr


def test_send_without_streaming_and_json(agent: Agent, home: Path) -> None:
    plain = run_cli(
        home,
        "a2a",
        "send",
        agent.url,
        "one two",
        "--no-stream",
        "--fingerprint",
        agent.fingerprint,
        SPECAI_TOKEN=TOKEN,
    )
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "echo: one two\n"
    result = run_cli(home, "a2a", "send", agent.url, "one two", "--json", SPECAI_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    task = json.loads(result.stdout)["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    text = "".join(p["text"] for a in task["artifacts"] for p in a["parts"])
    assert text == "echo: one two"


def test_query_a2a_uses_the_saved_token(agent: Agent, home: Path) -> None:
    (home / "tokens.json").write_text(json.dumps({agent.url: {"token": TOKEN}}))
    result = run_cli(home, "query", "--a2a", agent.url, "hi", "--fingerprint", agent.fingerprint)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "echo: hi\n"


def test_no_token_is_exit_4(agent: Agent, home: Path) -> None:
    result = run_cli(home, "a2a", "send", agent.url, "hi", "--fingerprint", agent.fingerprint)
    assert result.returncode == 4, result.stderr
    assert "401" in result.stderr
    assert "specai login" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_wrong_fingerprint_sends_nothing(agent: Agent, home: Path) -> None:
    before = agent.seen()
    wrong = ":".join(["AB"] * 32)
    result = run_cli(home, "a2a", "send", agent.url, "secret", "--fingerprint", wrong, SPECAI_TOKEN=TOKEN)
    assert result.returncode == 5
    assert agent.fingerprint in result.stderr
    assert "Traceback" not in result.stderr
    assert agent.seen() == before  # not even the card was asked for
    assert not (home / "known_servers.json").exists()


def test_not_an_a2a_agent(agent: Agent, home: Path) -> None:
    result = run_cli(
        home, "a2a", "card", "--server", agent.url + "/nowhere", "--fingerprint", agent.fingerprint
    )
    assert result.returncode == 1
    assert "is not an A2A agent" in result.stderr
    assert "404" in result.stderr


def test_unreachable(home: Path) -> None:
    result = run_cli(home, "a2a", "send", f"https://127.0.0.1:{free_port()}", "hi")
    assert result.returncode == 1
    assert "connection refused" in result.stderr
    assert "Traceback" not in result.stderr
