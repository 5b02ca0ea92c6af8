"""The graph API end to end: a real `specai server` over real TLS, on SQLite and on PostgreSQL, auth on."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import ENGINES, fresh_database_url
from live import Event, ServerProcess, SseReader, add_user
from live import make_home as empty_home

from helpers import assert_error
from specai.graph.model import NODE_TYPES

pytestmark = pytest.mark.live

REPO_ROOT = Path(__file__).resolve().parents[1]
GRAPH_AGENT = """
[agents.librarian]
model_provider = "mock"
mock_script = [
  { tool_call = { name = "graph_add", arguments = { node_type = "fact", label = "Paris is in France", properties = { source = "chat" } } } },
  { tool_call = { name = "graph_search", arguments = { query = "paris" } } },
  { text = "Noted." },
]

[agents.forgetful]
model_provider = "mock"
denied_tools = ["graph_*"]
mock_script = [
  { tool_call = { name = "graph_add", arguments = { node_type = "fact", label = "should not exist" } } },
  { text = "I may not write to the graph." },
]
"""


@dataclass
class Live:
    """A running server, its home, and an authenticated client."""

    server: ServerProcess
    http: httpx.Client
    engine: str


def write_config(home: Path, database_url: str | None, extra: str = "") -> None:
    lines = ["[auth]", "enabled = true", "", "[server]", "sse_keepalive_secs = 1", ""]
    if database_url:
        lines += ["[database]", f'url = "{database_url}"', ""]
    lines += ["[graph]", f'bootstrap_root = "{REPO_ROOT}"', "stream_poll_secs = 5", ""]
    (home / "spec-ai.config.toml").write_text("\n".join(lines) + extra)


def login(server: ServerProcess) -> httpx.Client:
    return server.client(server.login("alice"))


def make_home(root: Path) -> Path:
    home = empty_home(root)
    add_user(home, "alice")
    return home


@pytest.fixture(scope="module", params=ENGINES)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One server per engine for the module (the tests use distinct sessions)."""
    home = make_home(tmp_path_factory.mktemp(f"graph-{request.param}"))
    url = fresh_database_url(request)
    write_config(home, url, GRAPH_AGENT)
    server = ServerProcess(home).start()
    http = login(server)
    try:
        yield Live(server, http, request.param)
    finally:
        http.close()
        server.stop()


def node(
    live: Live, session: str, label: str, node_type: str = "entity", **properties: Any
) -> dict[str, Any]:
    body = {"session_id": session, "node_type": node_type, "label": label, "properties": properties}
    response = live.http.post("/graph/nodes", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def edge(
    live: Live, session: str, source: int, target: int, edge_type: str = "RELATES_TO", **extra: Any
) -> Any:
    body = {"session_id": session, "source_id": source, "target_id": target, "edge_type": edge_type, **extra}
    response = live.http.post("/graph/edges", json=body)
    assert response.status_code == 201, response.text
    return response.json()


# --- the original's happy paths --------------------------------------------------------------------------------


def test_node_crud_keeps_the_original_shapes(live: Live) -> None:
    before = time.time()
    alice = node(live, "crud", "Alice", "Entity", age=30)
    assert set(alice) == {
        "id",
        "uid",
        "version",
        "session_id",
        "node_type",
        "label",
        "properties",
        "created_at",
        "updated_at",
    }
    assert (alice["node_type"], alice["properties"], alice["version"]) == ("entity", {"age": 30}, 1)
    created = alice["created_at"]
    assert created.endswith("+00:00")
    assert abs(_epoch(created) - before) < 30
    time.sleep(0.05)
    fetched = live.http.get(f"/graph/nodes/{alice['id']}").json()
    assert fetched == alice  # the stored timestamp, not the time of the read

    node(live, "crud", "Graphs", "concept")
    listed = live.http.get("/graph/nodes", params={"session_id": "crud"}).json()
    assert listed["count"] == 2
    assert listed["next_cursor"] is None
    assert [n["label"] for n in listed["nodes"]] == ["Graphs", "Alice"]
    only = live.http.get("/graph/nodes", params={"session_id": "crud", "node_type": "concept"}).json()
    assert [n["label"] for n in only["nodes"]] == ["Graphs"]

    put = live.http.put(f"/graph/nodes/{alice['id']}", json={"properties": {"age": 31}})
    assert put.status_code == 200
    assert put.json()["properties"] == {"age": 31}
    assert put.json()["version"] == 2
    assert put.json()["created_at"] == created
    patched = live.http.patch(
        f"/graph/nodes/{alice['id']}", json={"label": "Alice B", "properties": {"x": 1}}
    )
    assert patched.json()["label"] == "Alice B"
    assert patched.json()["properties"] == {"age": 31, "x": 1}

    gone = live.http.delete(f"/graph/nodes/{alice['id']}")
    assert gone.status_code == 200
    assert gone.json() == {
        "deleted": "node",
        "id": alice["id"],
        "edges_deleted": 0,
    }
    assert_error(live.http.get(f"/graph/nodes/{alice['id']}"), 404, "not_found")


def test_edge_crud_and_filters(live: Live) -> None:
    a, b, c = (node(live, "edges", name)["id"] for name in "abc")
    ab = edge(live, "edges", a, b, "knows_about", predicate="knows", weight=0.95, properties={"since": 2020})
    assert set(ab) == {
        "id",
        "uid",
        "version",
        "session_id",
        "source_id",
        "target_id",
        "edge_type",
        "predicate",
        "properties",
        "weight",
        "created_at",
        "updated_at",
    }
    assert (ab["edge_type"], ab["predicate"], ab["weight"]) == ("KNOWS_ABOUT", "knows", 0.95)
    ac = edge(live, "edges", a, c, "USES")
    bc = edge(live, "edges", b, c)
    assert ac["weight"] == 1.0
    assert ac["properties"] is None
    assert live.http.get(f"/graph/edges/{ab['id']}").json() == ab

    def ids(**params: Any) -> list[int]:
        body = live.http.get("/graph/edges", params={"session_id": "edges", **params}).json()
        assert body["count"] == len(body["edges"])
        return [e["id"] for e in body["edges"]]

    assert ids() == [bc["id"], ac["id"], ab["id"]]
    assert ids(source_id=a) == [ac["id"], ab["id"]]
    assert ids(target_id=c) == [bc["id"], ac["id"]]
    assert ids(source_id=a, target_id=c) == [ac["id"]]
    assert ids(edge_type="uses") == [ac["id"]]
    patched = live.http.patch(f"/graph/edges/{ab['id']}", json={"weight": 0.5, "version": 1})
    assert patched.json()["weight"] == 0.5
    assert patched.json()["version"] == 2
    deleted = live.http.delete(f"/graph/edges/{ac['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"deleted": "edge", "id": ac["id"]}
    removed = live.http.delete(f"/graph/nodes/{b}").json()
    assert removed["edges_deleted"] == 2
    assert ids() == []


def test_listing_pages_with_a_cursor(live: Live) -> None:
    made = [node(live, "pages", f"n{i}")["id"] for i in range(5)]
    seen: list[int] = []
    params: dict[str, Any] = {"session_id": "pages", "limit": 2}
    while True:
        body = live.http.get("/graph/nodes", params=params).json()
        seen += [n["id"] for n in body["nodes"]]
        if body["next_cursor"] is None:
            break
        params["cursor"] = body["next_cursor"]
    assert seen == made[::-1]


# --- every error has its status and code; nothing reaches a 500 ------------------------------------------------


def test_errors_have_documented_status_and_code(live: Live) -> None:
    a = node(live, "errors", "a")["id"]
    other = node(live, "errors-other", "b")["id"]
    http = live.http
    bad_type = assert_error(
        http.post("/graph/nodes", json={"session_id": "errors", "node_type": "person", "label": "x"}),
        422,
        "invalid_node_type",
    )
    assert bad_type["details"] == {"valid": list(NODE_TYPES)}
    assert "concept" in bad_type["error"]
    cases: list[tuple[str, str, Any, int, str]] = [
        (
            "POST",
            "/graph/nodes",
            {"session_id": "errors", "node_type": "entity", "label": "x", "properties": [1]},
            422,
            "unprocessable",
        ),
        ("POST", "/graph/nodes", {"session_id": "errors", "node_type": "entity"}, 400, "invalid_request"),
        (
            "POST",
            "/graph/nodes",
            {"session_id": "", "node_type": "entity", "label": "x"},
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/graph/edges",
            {"session_id": "errors", "source_id": a, "target_id": a, "edge_type": "USES", "weight": 1.5},
            422,
            "unprocessable",
        ),
        (
            "POST",
            "/graph/edges",
            {"session_id": "errors", "source_id": a, "target_id": a, "edge_type": "has space"},
            422,
            "unprocessable",
        ),
        (
            "POST",
            "/graph/edges",
            {"session_id": "errors", "source_id": a, "target_id": 10**9, "edge_type": "USES"},
            404,
            "not_found",
        ),
        (
            "POST",
            "/graph/edges",
            {"session_id": "errors", "source_id": a, "target_id": other, "edge_type": "USES"},
            422,
            "unprocessable",
        ),
        (
            "POST",
            "/graph/edges",
            {"session_id": "errors", "source_id": "a", "target_id": a, "edge_type": "USES"},
            400,
            "invalid_request",
        ),
        ("GET", "/graph/nodes/999999999", None, 404, "not_found"),
        ("PUT", "/graph/nodes/999999999", {"properties": {}}, 404, "not_found"),
        ("PATCH", "/graph/nodes/999999999", {"label": "x"}, 404, "not_found"),
        ("DELETE", "/graph/nodes/999999999", None, 404, "not_found"),
        ("GET", "/graph/edges/999999999", None, 404, "not_found"),
        ("PATCH", "/graph/edges/999999999", {"weight": 0.1}, 404, "not_found"),
        ("DELETE", "/graph/edges/999999999", None, 404, "not_found"),
        ("PUT", f"/graph/nodes/{a}", {"properties": {}, "version": 99}, 409, "version_conflict"),
        ("PUT", f"/graph/nodes/{a}", {"properties": "flat"}, 422, "unprocessable"),
        ("PUT", f"/graph/nodes/{a}", {}, 400, "invalid_request"),
        ("PATCH", f"/graph/nodes/{a}", {}, 400, "invalid_request"),
        ("GET", "/graph/nodes?session_id=errors&limit=0", None, 400, "invalid_request"),
        ("GET", "/graph/nodes?session_id=errors&limit=1001", None, 400, "invalid_request"),
        ("GET", "/graph/nodes?session_id=errors&cursor=xyz", None, 400, "invalid_request"),
        ("GET", "/graph/nodes?session_id=errors&node_type=person", None, 422, "invalid_node_type"),
        ("GET", "/graph/nodes", None, 400, "invalid_request"),
        ("GET", "/graph/nodes?session_id=", None, 400, "invalid_request"),
        ("GET", f"/graph/edges?session_id={'s' * 129}", None, 400, "invalid_request"),
        ("GET", "/graph/edges?session_id=errors&source_id=abc", None, 400, "invalid_request"),
        ("GET", "/graph/stream?session_id=errors&since=yesterday", None, 400, "invalid_request"),
        ("GET", "/graph/stream", None, 400, "invalid_request"),
        ("POST", "/bootstrap", {"session_id": 5}, 400, "invalid_request"),
        # numbers beyond 64 bits name nothing; NUL cannot be stored by PostgreSQL, so it is refused everywhere
        ("GET", f"/graph/nodes/{10**20}", None, 404, "not_found"),
        ("DELETE", f"/graph/edges/{10**20}", None, 404, "not_found"),
        (
            "POST",
            "/graph/edges",
            {"session_id": "errors", "source_id": 10**20, "target_id": a, "edge_type": "USES"},
            404,
            "not_found",
        ),
        ("GET", f"/graph/nodes?session_id=errors&cursor={10**20}", None, 400, "invalid_request"),
        ("GET", f"/graph/edges?session_id=errors&source_id={10**20}", None, 400, "invalid_request"),
        (
            "POST",
            "/graph/nodes",
            {"session_id": "e\x00", "node_type": "entity", "label": "x"},
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/graph/nodes",
            {"session_id": "errors", "node_type": "entity", "label": "a\x00"},
            400,  # NUL anywhere in a JSON body is refused before any route parses it
            "invalid_request",
        ),
        (
            "POST",
            "/graph/edges",
            {
                "session_id": "errors",
                "source_id": a,
                "target_id": a,
                "edge_type": "USES",
                "predicate": "\x00",
            },
            400,
            "invalid_request",
        ),
    ]
    for method, path, body, status, code in cases:
        response = http.request(method, path, json=body) if body is not None else http.request(method, path)
        assert response.status_code == status, (method, path, body, response.text)
        assert_error(response, status, code)
    raw = http.post("/graph/nodes", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(raw, 400, "invalid_request")
    resumed = http.get("/graph/stream", params={"session_id": "errors"}, headers={"Last-Event-ID": "-3"})
    assert_error(resumed, 400, "invalid_request")
    assert live.http.get(f"/graph/nodes/{a}").json()["version"] == 1  # nothing above changed it


def test_graph_routes_require_a_token(live: Live) -> None:
    with live.server.client() as anonymous:
        for method, path in [
            ("GET", "/graph/nodes?session_id=s"),
            ("POST", "/graph/nodes"),
            ("GET", "/graph/stream?session_id=s"),
            ("POST", "/bootstrap"),
            ("DELETE", "/graph/nodes/1"),
            ("GET", "/graph/edges/1"),
        ]:
            assert_error(anonymous.request(method, path), 401, "unauthorized")


# --- the change stream -----------------------------------------------------------------------------------------


class Watcher(SseReader):
    """`/graph/stream` of one session, read in a thread: its change events, its `open` event, and any other."""

    def __init__(
        self, live: Live, session: str, headers: dict[str, str] | None = None, **params: Any
    ) -> None:
        self.stop_after: int | None = None
        options = {"params": {"session_id": session, **params}, "headers": headers or {}}
        super().__init__(live.http, "GET", "/graph/stream", until=self._enough, **options)

    def start(self, timeout: float = 10, stop_after: int | None = None) -> Watcher:
        """Start reading; with `stop_after`, close the stream after that many changes."""
        self.stop_after = stop_after
        super().start(timeout)
        assert self.status == 200, (self.status, self.body)
        return self

    def _enough(self, events: list[Event]) -> bool:
        return self.stop_after is not None and len(_changes(events)) >= self.stop_after

    @property
    def changes(self) -> list[dict[str, Any]]:
        return [event.data for event in _changes(self.events)]

    @property
    def ids(self) -> list[int]:
        return [int(event.id) if event.id is not None else -1 for event in _changes(self.events)]

    @property
    def opened(self) -> tuple[int, dict[str, Any]] | None:
        """The first `open` event: its id and data."""
        event = next((e for e in self.events if e.event == "open"), None)
        return None if event is None else (int(event.id) if event.id is not None else -1, event.data)

    @property
    def others(self) -> list[tuple[str, Any]]:
        first_open = next((e for e in self.events if e.event == "open"), None)
        return [(e.event, e.data) for e in self.events if e.event != "message" and e is not first_open]

    def wait_for(self, count: int, timeout: float = 15) -> None:  # type: ignore[override]
        """Wait for `count` changes."""
        super().wait_for(lambda events: len(_changes(events)) >= count, timeout)


def _changes(events: list[Event]) -> list[Event]:
    return [event for event in events if event.event == "message"]


def test_stream_delivers_changes_with_ids_and_snapshots(live: Live) -> None:
    watcher = Watcher(live, "stream").start()
    a = node(live, "stream", "a")
    b = node(live, "stream", "b")
    node(live, "not-this-session", "elsewhere")
    e = edge(live, "stream", a["id"], b["id"])
    live.http.delete(f"/graph/nodes/{a['id']}")
    watcher.wait_for(5)
    ops = [(c["entity_type"], c["operation"], c["entity_id"]) for c in watcher.changes]
    assert ops == [
        ("node", "create", a["id"]),
        ("node", "create", b["id"]),
        ("edge", "create", e["id"]),
        ("edge", "delete", e["id"]),
        ("node", "delete", a["id"]),
    ]
    assert watcher.ids == [c["id"] for c in watcher.changes]
    assert watcher.ids == sorted(watcher.ids)
    first = watcher.changes[0]
    assert set(first) == {
        "id",
        "session_id",
        "entity_type",
        "entity_id",
        "entity_uid",
        "operation",
        "version",
        "timestamp",
        "data",
        "origin",
    }
    assert first["origin"] is None  # written here, not synced from another member
    assert first["data"] == a
    assert first["entity_uid"] == a["uid"]
    assert watcher.others == []
    assert watcher.opened is not None
    opened_id, opened = watcher.opened
    assert opened == {"session_id": "stream", "after": opened_id}
    assert opened_id < watcher.ids[0]


def test_reconnecting_with_last_event_id_misses_nothing_while_writes_continue(live: Live) -> None:
    session = "resume"
    total = 60
    created: list[int] = []
    writer_done = threading.Event()

    def write() -> None:
        try:
            for i in range(total):
                created.append(node(live, session, f"n{i}")["id"])
                time.sleep(0.005)
        finally:
            writer_done.set()

    first = Watcher(live, session).start(stop_after=10)
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    first.wait_for(10)
    first.ended.wait(10)
    last_seen = first.ids[9]
    second = Watcher(live, session, headers={"Last-Event-ID": str(last_seen)}, since="0").start()
    assert writer_done.wait(60)
    second.wait_for(total - 10)
    got = [c["entity_id"] for c in first.changes[:10] + second.changes]
    assert got == created  # exactly every change, in order: no gap, no duplicate
    assert second.ids[0] > last_seen
    assert second.ids == sorted(set(second.ids))


def test_since_replays_history_and_a_cursor_ahead_is_reset(live: Live) -> None:
    made = [node(live, "since", f"n{i}")["id"] for i in range(3)]
    replay = Watcher(live, "since", since="0").start()
    replay.wait_for(3)
    assert [c["entity_id"] for c in replay.changes] == made
    ahead = Watcher(live, "since", since=str(10**12)).start()
    later = node(live, "since", "later")["id"]
    ahead.wait_for(1)
    assert ahead.others
    assert ahead.others[0][0] == "reset"
    assert ahead.others[0][1]["code"] == "cursor_ahead"
    assert [c["entity_id"] for c in ahead.changes] == [later]


# --- bootstrap and agent tools ---------------------------------------------------------------------------------


def test_bootstrap_twice_gives_the_same_graph(live: Live) -> None:
    first = live.http.post("/bootstrap", json={"session_id": "boot"})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["nodes_created"] > 3
    assert body["edges_created"] == body["nodes_created"] - 1
    root = live.http.get(f"/graph/nodes/{body['root_node_id']}").json()
    assert root["properties"]["bootstrap_source"] == "universal-code-plugin"

    def counts() -> tuple[int, int]:
        nodes = live.http.get("/graph/nodes", params={"session_id": "boot", "limit": 1000}).json()["count"]
        edges = live.http.get("/graph/edges", params={"session_id": "boot", "limit": 1000}).json()["count"]
        return nodes, edges

    before = counts()
    again = live.http.post("/bootstrap", json={"session_id": "boot"})
    assert again.status_code == 200, again.text
    assert again.json()["nodes_created"] == 0
    assert again.json()["edges_created"] == 0
    assert again.json()["root_node_id"] == body["root_node_id"]
    assert counts() == before == (body["nodes_created"], body["edges_created"])
    default = live.http.post("/bootstrap", json={})
    assert default.json()["session_id"] == "visionos-dashboard"


def test_agents_read_and_write_their_sessions_graph(live: Live) -> None:
    response = live.http.post(
        "/query", json={"message": "Remember: Paris is in France", "agent": "librarian"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    added, searched = body["tool_calls"]
    assert added["name"] == "graph_add", added
    assert added["success"], added
    assert searched["name"] == "graph_search", searched
    assert searched["success"], searched
    assert json.loads(searched["output"])["nodes"][0]["label"] == "Paris is in France"
    stored = live.http.get("/graph/nodes", params={"session_id": body["session_id"]}).json()["nodes"]
    assert [(n["node_type"], n["label"], n["properties"]) for n in stored] == [
        ("fact", "Paris is in France", {"source": "chat"})
    ]

    refused = live.http.post("/query", json={"message": "Remember this", "agent": "forgetful"}).json()
    [call] = refused["tool_calls"]
    assert not call["success"]
    assert "not allowed" in call["error"]
    assert live.http.get("/graph/nodes", params={"session_id": refused["session_id"]}).json()["count"] == 0


# --- durability and shutdown (their own servers, SQLite) ---------------------------------------------------------


def test_kill_9_loses_no_committed_change(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    write_config(home, None)
    server = ServerProcess(home).start()
    try:
        with login(server) as http:
            made = []
            for i in range(20):
                response = http.post(
                    "/graph/nodes", json={"session_id": "k", "node_type": "entity", "label": f"n{i}"}
                )
                assert response.status_code == 201
                made.append(response.json()["id"])
        server.stop(signal.SIGKILL)
        server = ServerProcess(home, port=server.port).start()
        with login(server) as http:
            listed = http.get("/graph/nodes", params={"session_id": "k"}).json()
            assert sorted(n["id"] for n in listed["nodes"]) == made
            live = Live(server, http, "sqlite")
            replay = Watcher(live, "k", since="0").start()
            replay.wait_for(20)
            assert [c["entity_id"] for c in replay.changes] == made
    finally:
        server.stop()


def test_shutdown_ends_open_streams_cleanly(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    write_config(home, None)
    server = ServerProcess(home).start()
    try:
        with login(server) as http:
            watcher = Watcher(Live(server, http, "sqlite"), "bye").start()
            elapsed = server.stop(signal.SIGTERM)
            assert watcher.ended.wait(5)
            assert elapsed < 5
            assert watcher.others == [
                ("error", {"error": "server is shutting down", "code": "shutting_down"})
            ]
    finally:
        server.stop()


def test_bootstrap_outside_a_repository_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    (home / "spec-ai.config.toml").write_text(
        f'[auth]\nenabled = true\n\n[graph]\nbootstrap_root = "{empty}"\n'
    )
    server = ServerProcess(home).start()
    try:
        with login(server) as http:
            body = assert_error(http.post("/bootstrap", json={}), 400, "not_a_repository")
            assert str(empty) in body["error"]
            assert http.get("/graph/nodes", params={"session_id": "visionos-dashboard"}).json()["count"] == 0
    finally:
        server.stop()


def _epoch(stamp: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(stamp).timestamp()
