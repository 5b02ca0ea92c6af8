"""Graph ownership against a real `specai server` (auth on, TLS) on SQLite and PostgreSQL, as a second user would
probe it: bob gets 404 on every read, write, stream, bootstrap and agent-tool access to alice's graph session, 200
after `specai graph share`, 403 on writes after `--read-only`, and a watcher loses the feed when unshared."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import ENGINES, database_toml
from live import PASSWORD, CliProcess, Event, ServerProcess, add_user, run_cli, sse_events

from helpers import assert_error

pytestmark = pytest.mark.live

AGENT = """
[agents.scribe]
model_provider = "mock"
mock_script = [
  { tool_call = { name = "graph_search", arguments = { query = "" } } },
  { tool_call = { name = "graph_add", arguments = { node_type = "fact", label = "injected by the agent" } } },
  { text = "done" },
]
"""


@dataclass
class Live:
    """A server with users root (admin), alice and bob; an HTTP client and a logged-in CLI home per user."""

    server: ServerProcess
    http: dict[str, httpx.Client]
    homes: dict[str, Path]

    def cli(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`specai ARGS` as `user` (their own home, token saved there by `specai login`)."""
        return run_cli(self.homes[user], *args, environ=self.env)

    def watch(self, user: str, *args: str) -> CliProcess:
        """A running `specai graph watch ARGS` as `user`."""
        return CliProcess(self.homes[user], "graph", "watch", *args, environ=self.env)

    @property
    def env(self) -> dict[str, str]:
        return {"SPECAI_SERVER": self.server.url, "SPECAI_FINGERPRINT": self.server.fingerprint}


@pytest.fixture(scope="module", params=ENGINES)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    base = tmp_path_factory.mktemp(f"graph-access-{request.param}")
    home = base / "server"
    home.mkdir(mode=0o700)
    repo = base / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text('[project]\nname = "tiny"\nversion = "0.1"\n')
    (repo / "main.py").write_text("print('hi')\n")
    for name, role in (("root", "admin"), ("alice", "user"), ("bob", "user")):
        add_user(home, name, role=role)
    database = database_toml(request)
    (home / "spec-ai.config.toml").write_text(
        f"[auth]\nenabled = true\n[server]\nsse_keepalive_secs = 1\n{database}"
        f'[graph]\nbootstrap_root = "{repo}"\n{AGENT}'
    )
    server = ServerProcess(home).start()
    http: dict[str, httpx.Client] = {}
    homes: dict[str, Path] = {}
    try:
        for name in ("root", "alice", "bob"):
            homes[name] = base / f"cli-{name}"
            homes[name].mkdir(mode=0o700)
            login = run_cli(
                homes[name],
                "login",
                "--server",
                server.url,
                "--username",
                name,
                "--password-stdin",
                "--fingerprint",
                server.fingerprint,
                input=PASSWORD + "\n",
            )
            assert login.returncode == 0, login.stderr
            saved = json.loads((homes[name] / "tokens.json").read_text())
            http[name] = server.client(next(iter(saved.values()))["token"])
        yield Live(server, http, homes)
    finally:
        for client in http.values():
            client.close()
        server.stop()


def make_graph(live: Live, session: str) -> tuple[int, int, int]:
    """Alice's nodes and edge in `session`: (node, other node, edge)."""
    ids = []
    for label in ("alice's secret", "second"):
        made = live.http["alice"].post(
            "/graph/nodes", json={"session_id": session, "node_type": "fact", "label": label}
        )
        assert made.status_code == 201, made.text
        ids.append(made.json()["id"])
    body = {"session_id": session, "source_id": ids[0], "target_id": ids[1], "edge_type": "RELATES_TO"}
    edge = live.http["alice"].post("/graph/edges", json=body)
    assert edge.status_code == 201, edge.text
    return ids[0], ids[1], edge.json()["id"]


def every_write(session: str, node: int, other: int, edge: int) -> list[tuple[str, str, Any]]:
    new_edge = {"session_id": session, "source_id": other, "target_id": node, "edge_type": "PART_OF"}
    return [
        ("POST", "/graph/nodes", {"session_id": session, "node_type": "fact", "label": "bob was here"}),
        ("PUT", f"/graph/nodes/{node}", {"properties": {"by": "bob"}}),
        ("PATCH", f"/graph/nodes/{node}", {"label": "bob was here"}),
        ("POST", "/graph/edges", new_edge),
        ("PATCH", f"/graph/edges/{edge}", {"weight": 0.1}),
        ("POST", "/bootstrap", {"session_id": session}),
        ("DELETE", f"/graph/edges/{edge}", None),
        ("DELETE", f"/graph/nodes/{other}", None),
    ]


def every_read(session: str, node: int, edge: int) -> list[tuple[str, dict[str, str]]]:
    return [
        ("/graph/nodes", {"session_id": session}),
        ("/graph/edges", {"session_id": session}),
        (f"/graph/nodes/{node}", {}),
        (f"/graph/edges/{edge}", {}),
    ]


def labels(live: Live, session: str) -> list[str]:
    listed = live.http["alice"].get("/graph/nodes", params={"session_id": session}).json()["nodes"]
    return [n["label"] for n in listed]


def stream_status(client: httpx.Client, session: str) -> int:
    with client.stream("GET", "/graph/stream", params={"session_id": session}) as response:
        return response.status_code


def failed_cli(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stderr.strip() == f"error: {message}", result.stderr
    assert "alice's secret" not in result.stdout + result.stderr


# --- a second user -------------------------------------------------------------------------------------------


def test_bob_gets_404_on_everything_of_alices_until_she_shares_and_403_on_writes_when_read_only(
    live: Live,
) -> None:
    session = "alice-notes"
    node, other, edge = make_graph(live, session)
    bob = live.http["bob"]
    before = labels(live, session)
    for path, params in every_read(session, node, edge):
        assert_error(bob.get(path, params=params), 404, "not_found")
    for method, path, body in every_write(session, node, other, edge):
        assert_error(bob.request(method, path, json=body), 404, "not_found")
    assert stream_status(bob, session) == 404
    assert labels(live, session) == before
    # the real CLI says exactly what it says for things that do not exist
    failed_cli(
        live.cli("bob", "graph", "nodes", "--session", session), f"graph session '{session}' not found"
    )
    failed_cli(live.cli("bob", "graph", "show", "node", str(node)), f"node {node} not found")
    failed_cli(
        live.cli("bob", "graph", "bootstrap", "--session", session), f"graph session '{session}' not found"
    )
    failed_cli(
        live.cli("bob", "graph", "watch", "--session", session), f"graph session '{session}' not found"
    )
    failed_cli(live.cli("bob", "graph", "share", session, "bob"), f"graph session '{session}' not found")
    assert json.loads(live.cli("bob", "graph", "sessions", "--json").stdout) == {"sessions": []}

    shared = live.cli("alice", "graph", "share", session, "bob")
    assert shared.returncode == 0, shared.stderr
    assert shared.stdout.strip() == f"shared graph session {session} with bob (read-write)"
    for path, params in every_read(session, node, edge):
        assert bob.get(path, params=params).status_code == 200, path
    assert stream_status(bob, session) == 200
    assert json.loads(live.cli("bob", "graph", "sessions", "--json").stdout) == {
        "sessions": [{"session_id": session, "owner": "alice", "access": "write"}]
    }
    table = live.cli("bob", "graph", "sessions").stdout
    assert [line.split() for line in table.splitlines() if session in line] == [
        ["│", session, "│", "alice", "│", "write", "│"]
    ]
    shown = live.cli("bob", "graph", "nodes", "--session", session, "--json")
    assert [n["label"] for n in json.loads(shown.stdout)["nodes"]] == ["second", "alice's secret"]
    assert bob.patch(f"/graph/nodes/{node}", json={"label": "edited by bob"}).status_code == 200

    read_only = live.cli("alice", "graph", "share", session, "bob", "--read-only")
    assert read_only.stdout.strip() == f"shared graph session {session} with bob (read-only)"
    before = labels(live, session)
    for method, path, body in every_write(session, node, other, edge):
        assert_error(bob.request(method, path, json=body), 403, "forbidden")
    for path, params in every_read(session, node, edge):
        assert bob.get(path, params=params).status_code == 200, path
    refused = live.cli("bob", "graph", "add-node", "--session", session, "--type", "fact", "--label", "no")
    failed_cli(refused, f"graph session '{session}' is shared with you read-only")
    assert labels(live, session) == before

    unshared = live.cli("alice", "graph", "unshare", session, "bob")
    assert unshared.stdout.strip() == f"graph session {session} is no longer shared with bob", unshared.stderr
    assert live.cli("bob", "graph", "sessions").stdout.startswith("no graph sessions yet")
    for path, params in every_read(session, node, edge):
        assert_error(bob.get(path, params=params), 404, "not_found")
    # an admin sees and changes everything
    assert live.http["root"].get(f"/graph/nodes/{node}").status_code == 200
    assert live.cli("root", "graph", "nodes", "--session", session).returncode == 0


def test_bobs_agent_cannot_read_or_write_alices_graph(live: Live) -> None:
    alice, bob = live.http["alice"], live.http["bob"]
    first = alice.post("/query", json={"message": "remember", "agent": "scribe"}).json()
    conversation = first["session_id"]
    assert all(call["success"] for call in first["tool_calls"]), first
    assert labels(live, conversation) == ["injected by the agent"]
    # alice's conversation id, found through the graph or guessed: bob's agent gets nowhere
    assert_error(
        bob.post("/query", json={"message": "x", "agent": "scribe", "session_id": conversation}),
        404,
        "not_found",
    )
    make_graph(live, "alice-graph-only")  # a graph session with no conversation: bob may start one of that id
    answer = bob.post("/query", json={"message": "x", "agent": "scribe", "session_id": "alice-graph-only"})
    assert answer.status_code == 200, answer.text
    for call in answer.json()["tool_calls"]:
        assert call == {
            **call,
            "success": False,
            "error": "this conversation has no knowledge graph you may use",
        }
        assert "secret" not in json.dumps(call)
    assert labels(live, "alice-graph-only") == ["second", "alice's secret"]
    assert labels(live, conversation) == ["injected by the agent"]
    # shared: the same agent reads her nodes (and writes, with a write share)
    assert live.cli("alice", "graph", "share", "alice-graph-only", "bob").returncode == 0
    again = bob.post(
        "/query", json={"message": "y", "agent": "scribe", "session_id": "alice-graph-only"}
    ).json()
    searched, added = again["tool_calls"]
    assert searched["success"]
    assert "alice's secret" in searched["output"]
    assert added["success"]


# --- the change feed -------------------------------------------------------------------------------------------


def test_a_watcher_whose_share_is_removed_stops_receiving(live: Live) -> None:
    session = "alice-live"
    make_graph(live, session)
    assert live.cli("alice", "graph", "share", session, "bob", "--read-only").returncode == 0
    with live.watch("bob", "--session", session, "--json") as watcher:
        watcher.stderr.expect("watching session")
        with live.http["bob"].stream("GET", "/graph/stream", params={"session_id": session}) as stream:
            assert stream.status_code == 200
            events = sse_events(stream.iter_lines())
            post = {"session_id": session, "node_type": "fact", "label": "while shared"}
            assert live.http["alice"].post("/graph/nodes", json=post).status_code == 201
            watcher.stdout.expect("while shared")
            received = _events_until(events, lambda e: e.event != "open")
            assert received[-1].data["data"]["label"] == "while shared"

            assert live.cli("alice", "graph", "unshare", session, "bob").returncode == 0
            post = {"session_id": session, "node_type": "fact", "label": "after unshare"}
            assert live.http["alice"].post("/graph/nodes", json=post).status_code == 201
            ended = _events_until(events, lambda e: e.event == "error")
            assert ended[-1].data == {"error": f"graph session '{session}' not found", "code": "not_found"}
            assert "after unshare" not in json.dumps([e.data for e in ended])
            assert list(events) == []  # the server ended the stream
        assert watcher.proc.wait(timeout=15) == 1  # the CLI stops instead of reconnecting
        watcher.stderr.expect(f"error: graph session '{session}' not found")
        watcher.stdout.join()
        assert "after unshare" not in watcher.stdout.text()


def _events_until(events: Iterator[Event], done: Callable[[Event], bool]) -> list[Event]:
    """Read SSE events (those with data) until one for which `done` is true; returns the events so far."""
    seen: list[Event] = []
    for event in events:
        if event.data in (None, ""):
            continue
        seen.append(event)
        if done(event):
            return seen
    raise AssertionError(f"the stream ended before the awaited event: {[(e.event, e.data) for e in seen]}")


def test_watching_a_new_session_claims_it(live: Live) -> None:
    with live.watch("bob", "--session", "bobs-demo") as watcher:
        watcher.stderr.expect("watching session bobs-demo")
        post = {"session_id": "bobs-demo", "node_type": "fact", "label": "alice first?"}
        assert_error(live.http["alice"].post("/graph/nodes", json=post), 404, "not_found")
        sessions = json.loads(live.cli("bob", "graph", "sessions", "--json").stdout)["sessions"]
        assert {"session_id": "bobs-demo", "owner": "bob", "access": "owner"} in sessions
