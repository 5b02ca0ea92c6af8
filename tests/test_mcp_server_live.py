"""Issue 14's MCP acceptance: a real `specai server` (auth on, real TLS) driven by the official `mcp` SDK's Streamable
HTTP client, trusting the certificate `specai cert pem` prints (the README's pinning step), with a fake OpenAI
upstream behind the agent.

Users: root (the first, an admin), alice and bob (`user`). Bob reaches nothing of alice's: not her graph through the
tools, not her conversations or graphs as resources, not her MCP session with his token.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from live import PASSWORD, ServerProcess, add_user, make_home, run_cli
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from fakes import FakeOpenAI
from helpers import assert_error
from specai.server.run import GRACE_SECONDS

pytestmark = [pytest.mark.live, pytest.mark.anyio]

BOB_PASSWORD = "bob-pass-12"
REPLY = ("Hello", " from", " the", " fake", " upstream")
CONFIG = """
default_agent = "oa"
[auth]
enabled = true
[agents.oa]
model_provider = "openai"
model_name = "gpt-fake"
base_url = "@OPENAI@"
api_key_source = "sk-test"
"""
TOOLS = {
    "ask_agent",
    "graph_search",
    "graph_get",
    "graph_add_node",
    "graph_add_edge",
    "calculator",
    "current_time",
}


@dataclass
class Served:
    """The server, the certificate file its clients trust, the fake upstream and a login token per user."""

    server: ServerProcess
    pem: Path
    upstream: FakeOpenAI
    tokens: dict[str, str]

    @property
    def endpoint(self) -> str:
        return f"{self.server.url}/mcp"

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pem))

    def http(
        self,
        user: str | None,
        seen: list[httpx2.Response] | None = None,
        streaming: anyio.Event | None = None,
    ) -> httpx2.AsyncClient:
        """The HTTP client an MCP host would configure: it trusts the server's PEM and sends the user's token;
        `seen` collects its responses, `streaming` is set once the server answered its GET stream."""
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}

        async def record(response: httpx2.Response) -> None:
            if seen is not None:
                seen.append(response)
            if streaming is not None and response.request.method == "GET" and response.status_code == 200:
                streaming.set()

        return httpx2.AsyncClient(
            verify=self.context(),
            headers=headers,
            timeout=httpx2.Timeout(30, read=300),
            event_hooks={"response": [record]},
        )

    @asynccontextmanager
    async def mcp(
        self,
        user: str,
        mode: str = "legacy",
        seen: list[httpx2.Response] | None = None,
        streaming: anyio.Event | None = None,
    ) -> AsyncIterator[Client]:
        """The SDK's client, connected as `user` (legacy: the initialize handshake and an Mcp-Session-Id)."""
        async with self.http(user, seen, streaming) as http:
            transport = streamable_http_client(self.endpoint, http_client=http)
            async with Client(transport, mode=mode, raise_exceptions=True) as client:
                yield client


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("mcp-live")
    upstream = FakeOpenAI(REPLY).start()
    server: ServerProcess | None = None
    try:
        home = make_home(base)
        (home / "spec-ai.config.toml").write_text(CONFIG.replace("@OPENAI@", upstream.base_url))
        add_user(home, "root")  # the first user: an admin, who would see everything
        add_user(home, "alice", PASSWORD, "user")
        add_user(home, "bob", BOB_PASSWORD, "user")
        server = ServerProcess(home).start()
        # the README's pinning step: compare the fingerprint, then trust the PEM it belongs to
        printed = run_cli(home, "cert", "fingerprint")
        assert printed.stdout.strip() == server.fingerprint, printed
        pem = run_cli(home, "cert", "pem")
        assert pem.returncode == 0, pem.stderr
        path = base / "specai.pem"
        path.write_text(pem.stdout)
        tokens = {"alice": server.login("alice"), "bob": server.login("bob", BOB_PASSWORD)}
        yield Served(server, path, upstream, tokens)
    finally:
        if server is not None:
            server.stop()
        upstream.stop()


def structured(result: types.CallToolResult) -> dict[str, Any]:
    assert isinstance(result.structured_content, dict), result
    return result.structured_content


async def test_lists_tools_and_asks_the_agent(served: Served) -> None:
    async with served.mcp("alice") as client:
        assert client.server_info is not None
        assert client.server_info.name == "specai"
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == TOOLS
        assert tools["ask_agent"].input_schema["properties"]["agent"]["enum"] == ["oa"]
        before = len(served.upstream.chat_requests)
        result = await client.call_tool("ask_agent", {"agent": "oa", "message": "Say hello"})
        assert not result.is_error, result
        answer = structured(result)
        assert answer["response"] == "".join(REPLY)
        assert answer["agent"] == "oa"
        assert isinstance(result.content[0], types.TextContent)
        assert json.loads(result.content[0].text)["session_id"] == answer["session_id"]
        assert len(served.upstream.chat_requests) == before + 1
        sent = served.upstream.chat_requests[-1].body
        assert sent["messages"][-1] == {"role": "user", "content": "Say hello"}
        # the conversation is a resource alice can read
        uri = f"specai://sessions/{answer['session_id']}"
        assert uri in {str(r.uri) for r in (await client.list_resources()).resources}
        read = await client.read_resource(uri)
        [contents] = read.contents
        assert isinstance(contents, types.TextResourceContents)
        document = json.loads(contents.text)
        assert [(m["role"], m["content"]) for m in document["messages"]] == [
            ("user", "Say hello"),
            ("assistant", "".join(REPLY)),
        ]


async def test_graph_tools_and_resource(served: Served) -> None:
    async with served.mcp("alice") as client:
        made = structured(
            await client.call_tool(
                "graph_add_node",
                {"session_id": "alice-live", "node_type": "entity", "label": "Grace Hopper"},
            )
        )
        other = structured(
            await client.call_tool(
                "graph_add_node", {"session_id": "alice-live", "node_type": "concept", "label": "COBOL"}
            )
        )
        one, two = made["node"]["id"], other["node"]["id"]
        edge = await client.call_tool(
            "graph_add_edge",
            {"session_id": "alice-live", "source_id": one, "target_id": two, "edge_type": "CREATED"},
        )
        assert not edge.is_error, edge
        found = structured(
            await client.call_tool("graph_search", {"session_id": "alice-live", "query": "hopper"})
        )
        assert [n["id"] for n in found["nodes"]] == [one]
        node = structured(await client.call_tool("graph_get", {"session_id": "alice-live", "node_id": one}))
        assert [e["target_id"] for e in node["outgoing"]] == [two]
        assert "specai://graph/alice-live" in {str(r.uri) for r in (await client.list_resources()).resources}
        [contents] = (await client.read_resource("specai://graph/alice-live")).contents
        assert isinstance(contents, types.TextResourceContents)
        graph = json.loads(contents.text)
        assert {n["label"] for n in graph["nodes"]} == {"Grace Hopper", "COBOL"}
        assert graph["access"] == "write"


async def test_bob_reaches_nothing_of_alices(served: Served) -> None:
    async with served.mcp("alice") as alice:
        await alice.call_tool(
            "graph_add_node", {"session_id": "alice-only", "node_type": "fact", "label": "hers"}
        )
        asked = structured(await alice.call_tool("ask_agent", {"agent": "oa", "message": "private"}))
    gone = {"error": "graph session 'alice-only' not found", "code": "not_found"}
    async with served.mcp("bob") as bob:
        for name, arguments in (
            ("graph_get", {"session_id": "alice-only"}),
            ("graph_search", {"session_id": "alice-only", "query": ""}),
            ("graph_add_node", {"session_id": "alice-only", "node_type": "fact", "label": "mine"}),
        ):
            result = await bob.call_tool(name, arguments)
            assert result.is_error, (name, result)
            assert structured(result) == gone, name
        continued = await bob.call_tool(
            "ask_agent", {"agent": "oa", "message": "hi", "session": asked["session_id"]}
        )
        assert structured(continued)["code"] == "not_found"
        uris = {str(r.uri) for r in (await bob.list_resources()).resources}
        assert "specai://graph/alice-only" not in uris
        assert f"specai://sessions/{asked['session_id']}" not in uris
        assert not any(uri.startswith("specai://graph/alice") for uri in uris)
        with pytest.raises(MCPError) as caught:
            await bob.read_resource("specai://graph/alice-only")
        assert caught.value.data == {"code": "not_found", "uri": "specai://graph/alice-only"}


async def test_bob_cannot_use_alices_mcp_session(served: Served) -> None:
    seen: list[httpx2.Response] = []
    async with served.mcp("alice", seen=seen) as alice:
        await alice.list_tools()
        session_id = next(r.headers["mcp-session-id"] for r in seen if "mcp-session-id" in r.headers)
        async with httpx.AsyncClient(verify=served.context(), timeout=30) as raw:
            stolen = await raw.post(
                served.endpoint,
                json={"jsonrpc": "2.0", "id": 7, "method": "tools/list"},
                headers={
                    "Authorization": f"Bearer {served.tokens['bob']}",
                    "Accept": "application/json, text/event-stream",
                    "Mcp-Session-Id": session_id,
                    "Mcp-Protocol-Version": str(alice.protocol_version),
                },
            )
        assert stolen.status_code == 404, stolen.text
        assert stolen.json()["error"]["message"] == "Session not found"
        assert {t.name for t in (await alice.list_tools()).tools} == TOOLS  # still alice's


async def test_foreign_origin_and_no_token(served: Served) -> None:
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "t", "version": "1"},
        },
    }
    accept = {"Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(verify=served.context(), timeout=30) as raw:
        alice = {**accept, "Authorization": f"Bearer {served.tokens['alice']}"}
        foreign = await raw.post(
            served.endpoint, json=initialize, headers={**alice, "Origin": "https://evil.example"}
        )
        assert assert_error(foreign, 403, "forbidden")["details"] == {"origin": "https://evil.example"}
        own = await raw.post(served.endpoint, json=initialize, headers={**alice, "Origin": served.server.url})
        assert own.status_code == 200, own.text
        refused = await raw.post(served.endpoint, json=initialize, headers=accept)
        assert_error(refused, 401, "unauthorized")
    seen: list[httpx2.Response] = []
    async with served.http(None, seen) as http:  # the SDK's client without a token: refused at once
        with pytest.raises(ExceptionGroup) as caught:  # the SDK's task groups wrap its error
            async with Client(streamable_http_client(served.endpoint, http_client=http), mode="legacy"):
                pass
    assert caught.group_contains(MCPError, depth=None)
    assert [response.status_code for response in seen] == [401]


async def test_a_modern_client_without_a_session(served: Served) -> None:
    """`mode="auto"` probes for the 2026-07-28 protocol (one self-contained POST per request, no session)."""
    async with served.mcp("alice", mode="auto") as alice:
        assert alice.protocol_version in MODERN_PROTOCOL_VERSIONS
        assert {t.name for t in (await alice.list_tools()).tools} == TOOLS
        made = await alice.call_tool(
            "graph_add_node", {"session_id": "alice-modern", "node_type": "fact", "label": "modern"}
        )
        assert not made.is_error, made
    async with served.mcp("bob", mode="auto") as bob:
        result = await bob.call_tool("graph_get", {"session_id": "alice-modern"})
        assert structured(result) == {"error": "graph session 'alice-modern' not found", "code": "not_found"}
        assert "specai://graph/alice-modern" not in {
            str(r.uri) for r in (await bob.list_resources()).resources
        }


async def test_server_stops_promptly_with_an_mcp_stream_open(tmp_path: Path) -> None:
    """A legacy client keeps a GET stream open; SIGTERM ends it at once instead of after the grace period."""
    home = make_home(tmp_path)
    (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\n")
    add_user(home, "alice")
    # the baseline, on this machine now: how long the same server takes to stop with nothing open
    alone = ServerProcess(home).start()
    baseline = await anyio.to_thread.run_sync(alone.stop)
    server = ServerProcess(home).start()
    try:
        served = Served(server, home / "tls" / "server.crt", FakeOpenAI(), {"alice": server.login()})
        streaming = anyio.Event()
        async with served.mcp("alice", streaming=streaming) as alice:
            await alice.list_tools()
            with anyio.fail_after(10):
                await streaming.wait()
            took = await anyio.to_thread.run_sync(server.stop)
        # a stream that held the server would add the whole grace period before requests are cut
        assert took < baseline + GRACE_SECONDS / 2, (took, baseline)
        assert "specai server stopped" in server.text()
    finally:
        server.stop()


async def test_several_workers_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """`--workers 2`: the SDK's clients, each on new connections that either process may take, all get answers
    (each request stands alone there), and ownership holds across the processes."""
    home = make_home(tmp_path)
    (home / "spec-ai.config.toml").write_text(f'[database]\nurl = "{pg_url}"\n[auth]\nenabled = true\n')
    add_user(home, "root")
    add_user(home, "alice", PASSWORD, "user")
    add_user(home, "bob", BOB_PASSWORD, "user")
    server = ServerProcess(home, "--workers", "2").start(timeout=60)
    try:
        tokens = {"alice": server.login("alice"), "bob": server.login("bob", BOB_PASSWORD)}
        served = Served(server, home / "tls" / "server.crt", FakeOpenAI(), tokens)
        for round_ in range(6):  # six clients, twelve and more connections: both workers serve some
            async with served.mcp("alice") as alice:
                made = await alice.call_tool(
                    "graph_add_node", {"session_id": "shared-pg", "node_type": "fact", "label": f"n{round_}"}
                )
                assert not made.is_error, made
                found = structured(await alice.call_tool("graph_get", {"session_id": "shared-pg"}))
                assert len(found["nodes"]) == round_ + 1
        async with served.mcp("bob") as bob:
            result = await bob.call_tool("graph_get", {"session_id": "shared-pg"})
            assert structured(result)["code"] == "not_found"
    finally:
        server.stop()
