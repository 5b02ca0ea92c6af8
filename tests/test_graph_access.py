"""Graph ownership and sharing over HTTP (in-process app, SQLite and PostgreSQL): owner, stranger, sharers, admin.

Users: root (admin), alice and bob (users). Alice owns session `a-s`; bob first sees nothing of it (404 everywhere,
with the same body as a missing thing), then reads and writes after a share, only reads after a read-only share.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from databases import ENGINES, database_toml, seed_users
from litestar.testing import TestClient

from helpers import assert_error
from specai import auth
from specai.config import load_settings
from specai.errors import ForbiddenError, InvalidRequestError, NotFoundError
from specai.graph.access import SessionNotFoundError
from specai.graph.store import GraphStore
from specai.identity.tls import ensure_server_cert, read_cert
from specai.server.app import create_app
from specai.store import Store
from specai.users.access import Principal
from specai.users.directory import add_user

SECRET = "g" * 40
SESSION = "a-s"
AGENTS = """
[agents.scribe]
model_provider = "mock"
mock_script = [
  { tool_call = { name = "graph_search", arguments = { query = "" } } },
  { tool_call = { name = "graph_add", arguments = { node_type = "fact", label = "written by the agent" } } },
  { text = "done" },
]
"""


@dataclass
class World:
    """The app and a bearer header per user."""

    client: TestClient
    headers: dict[str, dict[str, str]]

    def as_(self, user: str, method: str, path: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, headers=self.headers[user], **kwargs)


def tiny_repository(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text('[project]\nname = "tiny"\nversion = "0.1"\n')
    (repo / "main.py").write_text("print('hi')\n")
    return repo


@pytest.fixture(params=ENGINES)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    database = database_toml(request)
    (tmp_path / "spec-ai.config.toml").write_text(
        f'[auth]\nenabled = true\ntoken_secret = "{SECRET}"\n{database}'
        f'[graph]\nbootstrap_root = "{tiny_repository(tmp_path)}"\nmax_nodes_per_account = 40\n{AGENTS}'
    )
    settings = load_settings(env={"SPECAI_HOME": str(tmp_path)}, cwd=tmp_path)
    headers = {}
    for name, role in (("root", "admin"), ("alice", "user"), ("bob", "user")):
        user = add_user(settings.credentials_file, name, "pw-one-two", role)  # type: ignore[arg-type]
        token, _ = auth.issue_token(SECRET, name, 600, user_id=user.id, generation=user.token_generation)
        headers[name] = {"Authorization": f"Bearer {token}"}
    seed_users(settings)
    app = create_app(settings, cert=read_cert(ensure_server_cert(settings).cert))
    with TestClient(app) as client:
        yield World(client, headers)


@dataclass
class Alices:
    """What alice made in her session."""

    node: int
    other: int
    edge: int


def alices_graph(w: World) -> Alices:
    made = [
        w.as_(
            "alice", "POST", "/graph/nodes", json={"session_id": SESSION, "node_type": "fact", "label": label}
        )
        for label in ("secret plan", "second")
    ]
    assert [r.status_code for r in made] == [201, 201], [r.text for r in made]
    node, other = (r.json()["id"] for r in made)
    edge = w.as_(
        "alice",
        "POST",
        "/graph/edges",
        json={"session_id": SESSION, "source_id": node, "target_id": other, "edge_type": "RELATES_TO"},
    )
    assert edge.status_code == 201, edge.text
    return Alices(node, other, edge.json()["id"])


def reads(a: Alices) -> list[tuple[str, str, dict[str, Any]]]:
    """Every read of alice's session: (method, path, request options)."""
    return [
        ("GET", "/graph/nodes", {"params": {"session_id": SESSION}}),
        ("GET", "/graph/edges", {"params": {"session_id": SESSION}}),
        ("GET", f"/graph/nodes/{a.node}", {}),
        ("GET", f"/graph/edges/{a.edge}", {}),
        ("GET", "/graph/stream", {"params": {"session_id": SESSION}}),
    ]


def writes(a: Alices) -> list[tuple[str, str, dict[str, Any]]]:
    """Every write to alice's session."""
    edge = {"session_id": SESSION, "source_id": a.other, "target_id": a.node, "edge_type": "PART_OF"}
    return [
        ("POST", "/graph/nodes", {"json": {"session_id": SESSION, "node_type": "fact", "label": "injected"}}),
        ("PUT", f"/graph/nodes/{a.node}", {"json": {"properties": {"owned": "by bob"}}}),
        ("PATCH", f"/graph/nodes/{a.node}", {"json": {"label": "changed by bob"}}),
        ("POST", "/graph/edges", {"json": edge}),
        ("PATCH", f"/graph/edges/{a.edge}", {"json": {"weight": 0.5}}),
        ("POST", "/bootstrap", {"json": {"session_id": SESSION}}),
        ("DELETE", f"/graph/edges/{a.edge}", {}),
        ("DELETE", f"/graph/nodes/{a.other}", {}),
    ]


def snapshot(w: World) -> tuple[Any, Any]:
    nodes = w.as_("alice", "GET", "/graph/nodes", params={"session_id": SESSION}).json()["nodes"]
    edges = w.as_("alice", "GET", "/graph/edges", params={"session_id": SESSION}).json()["edges"]
    return nodes, edges


# --- a stranger -----------------------------------------------------------------------------------------------


def test_a_stranger_gets_404_on_every_route_exactly_like_a_missing_thing(world: World) -> None:
    a = alices_graph(world)
    before = snapshot(world)
    for method, path, options in [*reads(a), *writes(a)]:
        body = assert_error(world.as_("bob", method, path, **options), 404, "not_found")
        assert "secret" not in json.dumps(body)
    # the same message as for ids and sessions that do not exist
    missing_node = assert_error(world.as_("bob", "GET", "/graph/nodes/987654"), 404, "not_found")
    hidden_node = assert_error(world.as_("bob", "GET", f"/graph/nodes/{a.node}"), 404, "not_found")
    assert hidden_node["error"] == missing_node["error"].replace("987654", str(a.node))
    hidden_edge = assert_error(world.as_("bob", "DELETE", f"/graph/edges/{a.edge}"), 404, "not_found")
    assert hidden_edge["error"] == f"edge {a.edge} not found"
    assert snapshot(world) == before
    assert world.as_("bob", "GET", "/graph/sessions").json() == {"sessions": []}
    for method, path in (
        ("GET", f"/graph/sessions/{SESSION}/shares"),
        ("DELETE", f"/graph/sessions/{SESSION}/shares/bob"),
    ):
        assert_error(world.as_("bob", method, path), 404, "not_found")
    share = world.as_("bob", "POST", f"/graph/sessions/{SESSION}/shares", json={"username": "bob"})
    assert_error(share, 404, "not_found")


def test_an_edge_to_someone_elses_node_is_404_like_a_missing_node(world: World) -> None:
    a = alices_graph(world)
    mine = world.as_(
        "bob", "POST", "/graph/nodes", json={"session_id": "b-s", "node_type": "fact", "label": "x"}
    )
    edge = {"session_id": "b-s", "source_id": mine.json()["id"], "target_id": a.node, "edge_type": "MENTIONS"}
    body = assert_error(world.as_("bob", "POST", "/graph/edges", json=edge), 404, "not_found")
    assert body["error"] == f"target node {a.node} not found"
    # across two sessions the caller can see, it is still the old 422
    other = world.as_(
        "alice", "POST", "/graph/nodes", json={"session_id": "a-2", "node_type": "fact", "label": "y"}
    )
    across = {
        "session_id": "a-2",
        "source_id": other.json()["id"],
        "target_id": a.node,
        "edge_type": "MENTIONS",
    }
    assert_error(world.as_("alice", "POST", "/graph/edges", json=across), 422, "unprocessable")


def test_an_unclaimed_session_reads_empty_and_the_first_write_claims_it(world: World) -> None:
    listed = world.as_("bob", "GET", "/graph/nodes", params={"session_id": "fresh"})
    assert listed.status_code == 200
    assert listed.json()["nodes"] == []
    assert world.as_("alice", "GET", "/graph/sessions").json() == {"sessions": []}  # a read claims nothing
    made = world.as_(
        "alice", "POST", "/graph/nodes", json={"session_id": "fresh", "node_type": "goal", "label": "g"}
    )
    assert made.status_code == 201
    assert world.as_("alice", "GET", "/graph/sessions").json() == {
        "sessions": [{"session_id": "fresh", "owner": "alice", "access": "owner"}]
    }
    assert_error(world.as_("bob", "GET", "/graph/nodes", params={"session_id": "fresh"}), 404, "not_found")


def test_bootstrap_claims_a_new_session_and_refuses_a_taken_one(world: World) -> None:
    first = world.as_("bob", "POST", "/bootstrap", json={"session_id": "code"})
    assert first.status_code == 201, first.text
    assert first.json()["nodes_created"] > 0, first.text
    assert_error(world.as_("alice", "POST", "/bootstrap", json={"session_id": "code"}), 404, "not_found")
    again = world.as_("bob", "POST", "/bootstrap", json={"session_id": "code"})
    assert again.status_code == 200
    assert again.json()["nodes_created"] == 0


# --- shares ---------------------------------------------------------------------------------------------------


def test_after_a_share_bob_reads_and_writes_and_after_unshare_he_is_out_again(world: World) -> None:
    a = alices_graph(world)
    shared = world.as_("alice", "POST", f"/graph/sessions/{SESSION}/shares", json={"username": "bob"})
    assert shared.status_code == 201, shared.text
    assert shared.json() == {"session_id": SESSION, "username": "bob", "access": "write"}
    assert world.as_("bob", "GET", "/graph/sessions").json() == {
        "sessions": [{"session_id": SESSION, "owner": "alice", "access": "write"}]
    }
    for method, path, options in reads(a)[:4]:
        assert world.as_("bob", method, path, **options).status_code == 200, path
    for method, path, options in writes(a):
        response = world.as_("bob", method, path, **options)
        assert response.status_code in (200, 201), (path, response.text)
    labels = [n["label"] for n in snapshot(world)[0]]
    assert "injected" in labels
    assert "changed by bob" in labels
    assert world.as_("alice", "GET", f"/graph/sessions/{SESSION}/shares").json() == {
        "session_id": SESSION,
        "owner": "alice",
        "shares": [{"username": "bob", "access": "write"}],
    }
    # a write sharer still cannot manage shares
    assert_error(world.as_("bob", "GET", f"/graph/sessions/{SESSION}/shares"), 403, "forbidden")
    assert_error(
        world.as_("bob", "POST", f"/graph/sessions/{SESSION}/shares", json={"username": "root"}),
        403,
        "forbidden",
    )
    gone = world.as_("alice", "DELETE", f"/graph/sessions/{SESSION}/shares/bob")
    assert gone.status_code == 200
    assert gone.json() == {"session_id": SESSION, "unshared": "bob"}
    for method, path, options in reads(a)[:2]:
        assert_error(world.as_("bob", method, path, **options), 404, "not_found")
    assert world.as_("bob", "GET", "/graph/sessions").json() == {"sessions": []}


def test_a_read_only_share_reads_and_gets_403_on_every_write(world: World) -> None:
    a = alices_graph(world)
    shared = world.as_(
        "alice", "POST", f"/graph/sessions/{SESSION}/shares", json={"username": "bob", "read_only": True}
    )
    assert shared.json()["access"] == "read"
    assert world.as_("bob", "GET", "/graph/sessions").json()["sessions"][0]["access"] == "read"
    for method, path, options in reads(a)[:4]:
        response = world.as_("bob", method, path, **options)
        assert response.status_code == 200, (path, response.text)
    assert [
        n["label"]
        for n in world.as_("bob", "GET", "/graph/nodes", params={"session_id": SESSION}).json()["nodes"]
    ] == [
        "second",
        "secret plan",
    ]
    before = snapshot(world)
    for method, path, options in writes(a):
        assert_error(world.as_("bob", method, path, **options), 403, "forbidden")
    assert snapshot(world) == before
    # sharing again upgrades the access
    world.as_("alice", "POST", f"/graph/sessions/{SESSION}/shares", json={"username": "bob"})
    assert (
        world.as_("bob", "PATCH", f"/graph/nodes/{a.node}", json={"label": "now allowed"}).status_code == 200
    )


def test_share_errors(world: World) -> None:
    alices_graph(world)
    path = f"/graph/sessions/{SESSION}/shares"
    assert_error(world.as_("alice", "POST", path, json={"username": "nobody"}), 404, "not_found")
    assert_error(world.as_("alice", "POST", path, json={"username": "alice"}), 400, "invalid_request")
    assert_error(world.as_("alice", "POST", path, json={}), 400, "invalid_request")
    assert_error(world.as_("alice", "DELETE", f"{path}/bob"), 404, "not_found")  # not shared with bob
    assert_error(world.as_("alice", "DELETE", f"{path}/nobody"), 404, "not_found")
    assert_error(world.as_("alice", "GET", "/graph/sessions/never-made/shares"), 404, "not_found")
    # someone who cannot see the session learns nothing about usernames either
    stranger = world.as_("bob", "POST", path, json={"username": "nobody"})
    assert assert_error(stranger, 404, "not_found")["error"] == f"graph session '{SESSION}' not found"
    stranger = world.as_("bob", "DELETE", f"{path}/nobody")
    assert assert_error(stranger, 404, "not_found")["error"] == f"graph session '{SESSION}' not found"


# --- admin ----------------------------------------------------------------------------------------------------


def test_an_admin_sees_and_changes_everything_and_manages_shares(world: World) -> None:
    a = alices_graph(world)
    for method, path, options in reads(a)[:4]:
        assert world.as_("root", method, path, **options).status_code == 200
    assert world.as_("root", "PATCH", f"/graph/nodes/{a.node}", json={"label": "by root"}).status_code == 200
    shared = world.as_(
        "root", "POST", f"/graph/sessions/{SESSION}/shares", json={"username": "bob", "read_only": True}
    )
    assert shared.status_code == 201
    assert world.as_("bob", "GET", f"/graph/nodes/{a.node}").json()["label"] == "by root"
    assert world.as_("root", "GET", f"/graph/sessions/{SESSION}/shares").json()["owner"] == "alice"
    assert world.as_("root", "GET", "/graph/sessions").json() == {
        "sessions": []
    }  # owns and is shared nothing


# --- agents' graph tools --------------------------------------------------------------------------------------


def test_an_agent_run_by_bob_cannot_use_alices_graph_session(world: World) -> None:
    alices_graph(world)
    before = snapshot(world)
    answer = world.as_(
        "bob", "POST", "/query", json={"message": "go", "agent": "scribe", "session_id": SESSION}
    )
    assert answer.status_code == 200, answer.text
    searched, added = answer.json()["tool_calls"]
    for call in (searched, added):
        assert not call["success"]
        assert call["error"] == "this conversation has no knowledge graph you may use"
    assert snapshot(world) == before
    # shared read-only: the search sees alice's nodes, the add is refused
    world.as_(
        "alice", "POST", f"/graph/sessions/{SESSION}/shares", json={"username": "bob", "read_only": True}
    )
    answer = world.as_(
        "bob", "POST", "/query", json={"message": "again", "agent": "scribe", "session_id": SESSION}
    )
    searched, added = answer.json()["tool_calls"]
    assert searched["success"]
    assert "secret plan" in searched["output"]
    assert not added["success"]
    assert "read-only" in added["error"]
    assert snapshot(world) == before


def test_an_agent_claims_its_new_session_for_its_user(world: World) -> None:
    answer = world.as_("bob", "POST", "/query", json={"message": "go", "agent": "scribe"}).json()
    assert all(call["success"] for call in answer["tool_calls"]), answer
    session = answer["session_id"]
    assert world.as_("bob", "GET", "/graph/sessions").json()["sessions"] == [
        {"session_id": session, "owner": "bob", "access": "owner"}
    ]
    assert_error(world.as_("alice", "GET", "/graph/nodes", params={"session_id": session}), 404, "not_found")


# --- quota ------------------------------------------------------------------------------------------------------


def test_the_node_quota_counts_every_session_an_account_owns(world: World) -> None:
    for i in range(40):  # max_nodes_per_account = 40, over two sessions
        made = world.as_(
            "bob",
            "POST",
            "/graph/nodes",
            json={"session_id": f"q{i % 2}", "node_type": "fact", "label": str(i)},
        )
        assert made.status_code == 201, made.text
    over = world.as_(
        "bob", "POST", "/graph/nodes", json={"session_id": "q3", "node_type": "fact", "label": "41"}
    )
    body = assert_error(over, 409, "quota_exceeded")
    assert body["details"] == {"limit": 40, "count": 40}
    # the refused create claimed nothing: alice can still take q3
    assert (
        world.as_(
            "alice", "POST", "/graph/nodes", json={"session_id": "q3", "node_type": "fact", "label": "a"}
        ).status_code
        == 201
    )
    # a sharer's write counts against the owner
    world.as_("bob", "POST", "/graph/sessions/q0/shares", json={"username": "alice"})
    assert_error(
        world.as_(
            "alice", "POST", "/graph/nodes", json={"session_id": "q0", "node_type": "fact", "label": "x"}
        ),
        409,
        "quota_exceeded",
    )
    assert_error(world.as_("bob", "POST", "/bootstrap", json={"session_id": "q-code"}), 409, "quota_exceeded")
    assert world.as_("bob", "DELETE", f"/graph/nodes/{_first_id(world, 'q1')}").status_code == 200
    assert (
        world.as_(
            "alice", "POST", "/graph/nodes", json={"session_id": "q0", "node_type": "fact", "label": "x"}
        ).status_code
        == 201
    )


def _first_id(world: World, session: str) -> int:
    return int(
        world.as_("bob", "GET", "/graph/nodes", params={"session_id": session}).json()["nodes"][0]["id"]
    )


# --- the core, on both engines: race-free claims, data from before owners, token scopes -------------------------

ALICE = Principal("u-alice", "alice", "user", "write")
BOB = Principal("u-bob", "bob", "user", "write")
ROOT = Principal("u-root", "root", "admin", "admin")


@pytest.mark.anyio
async def test_concurrent_first_writes_leave_exactly_one_owner(store: Store) -> None:
    processes = [GraphStore(store), GraphStore(store)]  # two servers sharing the database: no shared cache

    async def write(i: int) -> str:
        who = (ALICE, BOB)[i % 2]
        await processes[i % 2].create_node("race", "fact", str(i), who=who)
        return who.user_id

    outcomes = await asyncio.gather(*(write(i) for i in range(12)), return_exceptions=True)
    winners = {o for o in outcomes if isinstance(o, str)}
    assert len(winners) == 1, outcomes
    losers = [o for o in outcomes if not isinstance(o, str)]
    assert len(losers) == 6, outcomes
    assert all(isinstance(o, SessionNotFoundError) for o in losers), outcomes
    owner = winners.pop()
    assert [e.owner_id for e in await processes[0].sessions(ALICE if owner == ALICE.user_id else BOB)] == [
        owner
    ]
    assert len((await processes[1].list_nodes("race", who=ROOT)).items) == 6


@pytest.mark.anyio
async def test_concurrent_claims_by_watchers_agree_on_the_owner(store: Store) -> None:
    processes = [GraphStore(store) for _ in range(4)]
    grants = await asyncio.gather(
        *(processes[i % 4].claim("watched", (ALICE, BOB)[i % 2]) for i in range(16)), return_exceptions=True
    )
    assert not [g for g in grants if isinstance(g, BaseException)], grants
    owners = {g.owner_id for g in grants}  # type: ignore[union-attr]
    assert len(owners) == 1
    levels = {(g.owner_id == ALICE.user_id) == (i % 2 == 0): g.level for i, g in enumerate(grants)}  # type: ignore[union-attr]
    assert levels == {True: "write", False: "none"}


@pytest.mark.anyio
async def test_graph_data_from_before_owners_is_for_admins_until_one_claims_it(store: Store) -> None:
    graph = GraphStore(store)
    old = await graph.create_node("legacy", "fact", "written before v4")  # trusted code: claims nothing
    assert (await graph.list_nodes("legacy", who=BOB)).items == []  # reads as empty, not as bob's
    with pytest.raises(SessionNotFoundError):
        await graph.create_node("legacy", "fact", "mine now?", who=BOB)
    with pytest.raises(NotFoundError, match=f"node {old.id} not found"):
        await graph.get_node(old.id, who=BOB)
    assert [n.id for n in (await graph.list_nodes("legacy", who=ROOT)).items] == [old.id]
    await graph.share("legacy", ROOT, BOB.user_id, "bob", writable=False)  # an admin's share claims it
    assert [e.access for e in await graph.sessions(BOB)] == ["read"]
    assert (await graph.get_node(old.id, who=BOB)).label == "written before v4"


@pytest.mark.anyio
async def test_a_read_scoped_key_cannot_write_even_its_own_session(store: Store) -> None:
    graph = GraphStore(store)
    node = await graph.create_node("mine", "fact", "x", who=ALICE)
    reader = Principal(ALICE.user_id, "alice", "user", "read")
    assert (await graph.get_node(node.id, who=reader)).id == node.id
    with pytest.raises(ForbiddenError, match="scope 'write'"):
        await graph.patch_node(node.id, label="y", who=reader)


@pytest.mark.anyio
async def test_new_graph_sessions_need_reachable_ids_but_old_data_stays_usable(store: Store) -> None:
    graph = GraphStore(store)
    with pytest.raises(InvalidRequestError, match="may only hold"):
        await graph.create_node("a/b", "fact", "x", who=ALICE)
    assert await graph.sessions(ALICE) == []  # the refused claim was rolled back
    old = await graph.create_node("old/id", "fact", "from before the rule")  # trusted code, as before v4
    assert (await graph.patch_node(old.id, label="an admin may still change it", who=ROOT)).version == 2
    await graph.create_node("old/id", "fact", "and claim it by writing", who=ROOT)
    assert [(e.session_id, e.access) for e in await graph.sessions(ROOT)] == [("old/id", "owner")]
