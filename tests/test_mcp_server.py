"""The MCP server at /mcp in-process (Litestar TestClient, raw JSON-RPC over Streamable HTTP): the Origin rule, auth,
the tools and resources as the caller, errors as tool errors, and sessions bound to the user who opened them.

Users: alice and bob (both `user`). The live test (test_mcp_server_live.py) drives a real server with the SDK's client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from helpers import assert_error
from specai import auth
from specai.config import load_settings
from specai.identity.tls import ensure_server_cert, read_cert
from specai.server.app import create_app
from specai.users.directory import add_user

SECRET = "m" * 40
ALLOWED = "https://app.example:8443"
VERSION = "2025-06-18"
CONFIG = f"""
[auth]
enabled = true
token_secret = "{SECRET}"
[server]
port = 3443
[mcp]
allowed_origins = ["{ALLOWED}/"]
[agents.scribe]
model_provider = "mock"
mock_script = [{{ text = "hello from the scribe" }}]
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
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": VERSION,
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
ACCEPT = {"Accept": "application/json, text/event-stream"}


def messages(text: str) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an SSE (or JSON) response body."""
    if text.lstrip().startswith("{"):
        return [json.loads(text)]
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


@dataclass
class Mcp:
    """One MCP session over the in-process app, as one user."""

    client: TestClient
    headers: dict[str, str]
    session_id: str = ""
    next_id: int = 1

    def open(self) -> Mcp:
        response = self.client.post("/mcp", json=INITIALIZE, headers=self.headers)
        assert response.status_code == 200, response.text
        assert messages(response.text)[0]["result"]["serverInfo"]["name"] == "specai"
        self.session_id = response.headers["mcp-session-id"]
        self.headers = {**self.headers, "mcp-session-id": self.session_id, "mcp-protocol-version": VERSION}
        done = self.client.post(
            "/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers
        )
        assert done.status_code == 202, done.text
        return self

    def request(
        self, method: str, params: dict[str, Any] | None = None, path: str = "/mcp"
    ) -> dict[str, Any]:
        """The JSON-RPC response to one request (its `result` or `error` object inside)."""
        self.next_id += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            body["params"] = params
        response = self.client.post(path, json=body, headers=self.headers)
        assert response.status_code == 200, response.text
        [reply] = [m for m in messages(response.text) if m.get("id") == self.next_id]
        return reply

    def call(self, name: str, **arguments: Any) -> dict[str, Any]:
        """A tools/call result."""
        reply = self.request("tools/call", {"name": name, "arguments": arguments})
        result: dict[str, Any] = reply["result"]
        return result


@dataclass
class World:
    client: TestClient
    headers: dict[str, dict[str, str]]

    def mcp(self, user: str | None) -> Mcp:
        auth_header = self.headers[user] if user else {}
        return Mcp(self.client, {**ACCEPT, **auth_header})


def _world(tmp_path: Path, config: str) -> Iterator[World]:
    (tmp_path / "spec-ai.config.toml").write_text(config)
    settings = load_settings(env={"SPECAI_HOME": str(tmp_path)}, cwd=tmp_path)
    headers = {}
    for name, role in (("alice", "user"), ("bob", "user"), ("root", "admin")):
        user = add_user(settings.credentials_file, name, "pw-one-two", role)  # type: ignore[arg-type]
        token, _ = auth.issue_token(SECRET, name, 600, user_id=user.id, generation=user.token_generation)
        headers[name] = {"Authorization": f"Bearer {token}"}
    app = create_app(settings, cert=read_cert(ensure_server_cert(settings).cert))
    with TestClient(app) as client:
        yield World(client, headers)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from _world(tmp_path, CONFIG)


def test_foreign_origin_is_refused_with_403(world: World) -> None:
    headers = {**ACCEPT, **world.headers["alice"], "Origin": "https://evil.example"}
    body = assert_error(world.client.post("/mcp", json=INITIALIZE, headers=headers), 403, "forbidden")
    assert body["details"] == {"origin": "https://evil.example"}
    assert "allowed_origins" in body["error"]


@pytest.mark.parametrize(
    "origin",
    [
        ALLOWED,
        "https://127.0.0.1:3443",
        "https://LOCALHOST:3443",
        "http://localhost:3443",
        "https://[::1]:3443",
    ],
)
def test_own_and_allowed_origins_are_accepted(world: World, origin: str) -> None:
    headers = {**ACCEPT, **world.headers["alice"], "Origin": origin}
    response = world.client.post("/mcp", json=INITIALIZE, headers=headers)
    assert response.status_code == 200, response.text
    assert messages(response.text)[0]["result"]["protocolVersion"] == VERSION


@pytest.mark.parametrize(
    "origin",
    [
        "https://127.0.0.1:9999",
        "https://localhost",
        "http://evil.example:3443",
        "null",
        "https://app.example",
    ],
)
def test_other_ports_names_and_opaque_origins_are_refused(world: World, origin: str) -> None:
    headers = {**ACCEPT, **world.headers["alice"], "Origin": origin}
    body = assert_error(world.client.post("/mcp", json=INITIALIZE, headers=headers), 403, "forbidden")
    assert body["details"] == {"origin": origin}


def test_no_token_gets_401(world: World) -> None:
    assert_error(world.client.post("/mcp", json=INITIALIZE, headers=ACCEPT), 401, "unauthorized")
    assert_error(world.client.get("/mcp", headers=ACCEPT), 401, "unauthorized")


def test_a_read_scoped_key_may_not_post(world: World) -> None:
    """Every MCP message is a POST, so MCP needs a write-scoped token (a read key gets the gate's 403)."""
    made = world.client.post(
        "/auth/keys", json={"name": "ro", "scope": "read"}, headers=world.headers["alice"]
    )
    assert made.status_code == 201, made.text
    headers = {**ACCEPT, "Authorization": f"Bearer {made.json()['key']}"}
    body = assert_error(world.client.post("/mcp", json=INITIALIZE, headers=headers), 403, "forbidden")
    assert "scope 'write'" in body["error"]


def test_other_paths_below_mcp_are_not_found(world: World) -> None:
    headers = {**ACCEPT, **world.headers["alice"]}
    assert_error(world.client.post("/mcp/other", json=INITIALIZE, headers=headers), 404, "not_found")


def test_trailing_slash_serves_the_endpoint(world: World) -> None:
    mcp = world.mcp("alice").open()
    assert {t["name"] for t in mcp.request("tools/list", path="/mcp/")["result"]["tools"]} == TOOLS


def test_tools_list_has_every_tool_with_a_schema(world: World) -> None:
    tools = {t["name"]: t for t in world.mcp("alice").open().request("tools/list")["result"]["tools"]}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert tool["description"]
        assert tool["inputSchema"]["type"] == "object"
    assert tools["ask_agent"]["inputSchema"]["properties"]["agent"]["enum"] == ["scribe"]
    assert tools["ask_agent"]["inputSchema"]["required"] == ["agent", "message"]
    assert tools["graph_get"]["annotations"]["readOnlyHint"] is True
    assert tools["graph_add_node"]["annotations"]["readOnlyHint"] is False


def test_graph_get_of_a_missing_session_is_a_tool_error(world: World) -> None:
    result = world.mcp("alice").open().call("graph_get", session_id="nobody-has-this")
    assert result["isError"] is True
    assert result["structuredContent"] == {
        "error": "graph session 'nobody-has-this' not found",
        "code": "not_found",
    }
    assert result["content"][0]["text"].startswith("not_found: ")


def test_bad_arguments_and_unknown_tools_are_tool_errors(world: World) -> None:
    mcp = world.mcp("alice").open()
    bad = mcp.call("graph_add_node", session_id="s", node_type="no-such-type", label="x")
    assert bad["isError"] is True
    assert bad["structuredContent"]["code"] == "invalid_node_type"
    missing = mcp.call("graph_add_edge", session_id="s", source_id="one", target_id=2, edge_type="USES")
    assert missing["structuredContent"]["code"] == "invalid_request"
    unknown = mcp.call("rm_rf")
    assert unknown["isError"] is True
    assert unknown["structuredContent"]["code"] == "invalid_request"
    assert "rm_rf" in unknown["structuredContent"]["error"]


def test_safe_builtin_tools(world: World) -> None:
    mcp = world.mcp("alice").open()
    result = mcp.call("calculator", expression="6*7")
    assert result.get("isError", False) is False
    assert result["structuredContent"] == {"expression": "6*7", "result": 42}
    assert json.loads(result["content"][0]["text"]) == {"expression": "6*7", "result": 42}
    now = mcp.call("current_time", timezone="Europe/Paris")["structuredContent"]
    assert now["timezone"] == "Europe/Paris"
    failed = mcp.call("calculator", expression="1/0")
    assert failed["isError"] is True
    assert failed["structuredContent"] == {"error": "division by zero", "code": "invalid_request"}


def test_graph_tools_within_the_callers_ownership(world: World) -> None:
    alice, bob = world.mcp("alice").open(), world.mcp("bob").open()
    first = alice.call("graph_add_node", session_id="a-graph", node_type="entity", label="Ada Lovelace")
    second = alice.call("graph_add_node", session_id="a-graph", node_type="concept", label="Engines")
    one, two = first["structuredContent"]["node"]["id"], second["structuredContent"]["node"]["id"]
    edge = alice.call("graph_add_edge", session_id="a-graph", source_id=one, target_id=two, edge_type="USES")
    assert edge["structuredContent"]["edge"]["source_id"] == one
    found = alice.call("graph_search", session_id="a-graph", query="lovelace")["structuredContent"]
    assert [n["label"] for n in found["nodes"]] == ["Ada Lovelace"]
    whole = alice.call("graph_get", session_id="a-graph")["structuredContent"]
    assert whole["access"] == "write"
    assert {n["id"] for n in whole["nodes"]} == {one, two}
    assert [e["target_id"] for e in whole["edges"]] == [two]
    node = alice.call("graph_get", session_id="a-graph", node_id=one)["structuredContent"]
    assert node["node"]["label"] == "Ada Lovelace"
    assert [e["target_id"] for e in node["outgoing"]] == [two]
    # bob reaches none of it: every answer is the one a missing session gets
    gone = {"error": "graph session 'a-graph' not found", "code": "not_found"}
    assert bob.call("graph_get", session_id="a-graph")["structuredContent"] == gone
    assert bob.call("graph_get", session_id="a-graph", node_id=one)["structuredContent"] == gone
    assert bob.call("graph_search", session_id="a-graph", query="")["structuredContent"] == gone
    denied = bob.call("graph_add_node", session_id="a-graph", node_type="entity", label="mine now")
    assert denied["structuredContent"] == gone
    assert (
        alice.call("graph_get", session_id="a-graph")["structuredContent"]["nodes"][0]["label"] == "Engines"
    )


def test_resources_are_the_callers_own(world: World) -> None:
    alice, bob = world.mcp("alice").open(), world.mcp("bob").open()
    alice.call("graph_add_node", session_id="alices-graph", node_type="fact", label="secret")
    asked = alice.call("ask_agent", agent="scribe", message="hello?")
    assert asked.get("isError", False) is False, asked
    answer = asked["structuredContent"]
    assert answer["response"] == "hello from the scribe"
    assert answer["agent"] == "scribe"
    conversation = answer["session_id"]
    uris = {r["uri"] for r in alice.request("resources/list")["result"]["resources"]}
    assert uris == {"specai://graph/alices-graph", f"specai://sessions/{conversation}"}
    read = alice.request("resources/read", {"uri": f"specai://sessions/{conversation}"})["result"]
    document = json.loads(read["contents"][0]["text"])
    assert read["contents"][0]["mimeType"] == "application/json"
    assert [m["role"] for m in document["messages"]] == ["user", "assistant"]
    assert document["messages"][1]["content"] == "hello from the scribe"
    graph = json.loads(
        alice.request("resources/read", {"uri": "specai://graph/alices-graph"})["result"]["contents"][0][
            "text"
        ]
    )
    assert [n["label"] for n in graph["nodes"]] == ["secret"]
    # bob lists nothing of alice's and reads none of it
    assert bob.request("resources/list")["result"]["resources"] == []
    for uri in ("specai://graph/alices-graph", f"specai://sessions/{conversation}", "https://elsewhere/x"):
        error = bob.request("resources/read", {"uri": uri})["error"]
        assert error["code"] == -32602
        assert error["data"] == {"code": "not_found", "uri": uri}
    # nor continue alice's conversation
    hijack = bob.call("ask_agent", agent="scribe", message="me too", session=conversation)
    assert hijack["structuredContent"]["code"] == "not_found"
    templates = alice.request("resources/templates/list")["result"]["resourceTemplates"]
    assert {t["uriTemplate"] for t in templates} == {
        "specai://graph/{session_id}",
        "specai://sessions/{session_id}",
    }


def test_a_graph_shared_read_only_is_listed_readable_and_not_writable(world: World) -> None:
    alice, bob = world.mcp("alice").open(), world.mcp("bob").open()
    alice.call("graph_add_node", session_id="to-share", node_type="fact", label="shared fact")
    shared = world.client.post(
        "/graph/sessions/to-share/shares",
        json={"username": "bob", "read_only": True},
        headers=world.headers["alice"],
    )
    assert shared.status_code in (200, 201), shared.text
    [listed] = bob.request("resources/list")["result"]["resources"]
    assert listed["uri"] == "specai://graph/to-share"
    assert "read-only" in listed["description"]
    document = json.loads(
        bob.request("resources/read", {"uri": "specai://graph/to-share"})["result"]["contents"][0]["text"]
    )
    assert (document["access"], [n["label"] for n in document["nodes"]]) == ("read", ["shared fact"])
    found = bob.call("graph_search", session_id="to-share", query="fact")["structuredContent"]
    assert found["count"] == 1
    refused = bob.call("graph_add_node", session_id="to-share", node_type="fact", label="bob's")
    assert refused["isError"] is True
    assert refused["structuredContent"]["code"] == "forbidden"


def test_ask_agent_continues_a_session_and_refuses_unknown_agents(world: World) -> None:
    alice = world.mcp("alice").open()
    first = alice.call("ask_agent", agent="scribe", message="one")["structuredContent"]
    again = alice.call("ask_agent", agent="scribe", message="two", session=first["session_id"])
    assert again["structuredContent"]["session_id"] == first["session_id"]
    unknown = alice.call("ask_agent", agent="nobody", message="hi")
    assert unknown["isError"] is True
    assert unknown["structuredContent"]["code"] == "agent_not_found"


def test_a_session_answers_only_the_user_who_opened_it(world: World) -> None:
    alice = world.mcp("alice").open()
    headers = {**alice.headers, **world.headers["bob"]}  # bob's token, alice's Mcp-Session-Id
    body = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
    stolen = world.client.post("/mcp", json=body, headers=headers)
    assert stolen.status_code == 404, stolen.text
    assert stolen.json()["error"]["message"] == "Session not found"
    assert alice.request("tools/list")["result"]["tools"]  # alice's session is unharmed


def test_each_request_acts_as_its_own_caller(world: World) -> None:
    """Handlers run in the session's task: the principal must come from each request, not the session's start."""
    alice = world.mcp("alice").open()
    alice.call("graph_add_node", session_id="per-request", node_type="fact", label="a")
    assert alice.call("graph_get", session_id="per-request")["structuredContent"]["access"] == "write"
    bob = world.mcp("bob").open()
    assert bob.call("graph_get", session_id="per-request")["structuredContent"]["code"] == "not_found"
    assert alice.call("graph_get", session_id="per-request")["structuredContent"]["nodes"][0]["label"] == "a"


def test_the_principal_is_each_requests_not_the_sessions_opener(world: World) -> None:
    """root opens a session with his admin token, then sends a write-scoped key of his own on it: that request
    acts with the key's scope (no admin powers), though the session is the same."""
    alice = world.mcp("alice").open()
    alice.call("graph_add_node", session_id="alices", node_type="fact", label="hers")
    made = world.client.post(
        "/auth/keys", json={"name": "mcp", "scope": "write"}, headers=world.headers["root"]
    )
    assert made.status_code == 201, made.text
    root = world.mcp("root").open()
    assert (
        root.call("graph_get", session_id="alices")["structuredContent"]["access"] == "write"
    )  # admin sees all
    root.headers = {**root.headers, "Authorization": f"Bearer {made.json()['key']}"}
    assert root.call("graph_get", session_id="alices")["structuredContent"]["code"] == "not_found"


def test_several_workers_serve_each_request_alone(tmp_path: Path) -> None:
    """With `--workers N` a session's next request may reach another process: no sessions, every POST alone."""
    for world in _world(tmp_path, CONFIG.replace("port = 3443\n", "port = 3443\nworkers = 2\n")):
        headers = {**ACCEPT, **world.headers["alice"]}
        opened = world.client.post("/mcp", json=INITIALIZE, headers=headers)
        assert opened.status_code == 200, opened.text
        assert "mcp-session-id" not in opened.headers
        mcp = Mcp(world.client, {**headers, "mcp-protocol-version": VERSION})
        assert mcp.call("calculator", expression="2+2")["structuredContent"]["result"] == 4
        mcp.call("graph_add_node", session_id="w", node_type="fact", label="alone")
        bob = Mcp(world.client, {**ACCEPT, **world.headers["bob"], "mcp-protocol-version": VERSION})
        assert bob.call("graph_get", session_id="w")["structuredContent"]["code"] == "not_found"


def test_mcp_disabled_has_no_endpoint(tmp_path: Path) -> None:
    config = CONFIG.replace("[mcp]\n", "[mcp]\nenabled = false\n")
    for world in _world(tmp_path, config):
        headers = {**ACCEPT, **world.headers["alice"]}
        assert_error(world.client.post("/mcp", json=INITIALIZE, headers=headers), 404, "not_found")
