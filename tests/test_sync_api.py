"""The `/sync/*` routes over HTTP, in process (SQLite and PostgreSQL): who may call them, every route's answer and
errors (status, code, body), idempotent apply, owners, clock skew, bulk failures, paged conflicts, peer tokens, and
an exchange between two servers (two apps, two stores) through the routes alone. One live test does the same
between two real `specai server` processes over TLS with the real client."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from databases import ENGINES, database_toml, seed_users
from litestar.testing import TestClient
from live import ServerProcess, add_user, make_home
from sqlalchemy import func, select

from helpers import assert_error
from specai import auth
from specai.config import load_settings
from specai.graph.sync import engine
from specai.identity.tls import ensure_server_cert, read_cert
from specai.identity.trust import KnownServers
from specai.server.app import create_app
from specai.server.schemas import sync as schemas
from specai.store.schema import graph_changelog
from specai.users.directory import add_user as add_account

SESSION = "notes"
Headers = dict[str, str]
ACCOUNTS = (("root", "admin"), ("alice", "user"), ("link", "mesh"), ("carol", "user"))


@dataclasses.dataclass
class Member:
    """One in-process server: its app client, a bearer header per account, its instance id and home."""

    client: TestClient
    tokens: dict[str, Headers]
    home: Path

    @property
    def instance_id(self) -> str:
        return str(self.client.app.state.specai.instance_id)

    @property
    def state(self) -> Any:
        return self.client.app.state.specai

    def call(self, who: str | None, method: str, path: str, **options: Any) -> Any:
        headers = self.tokens[who] if who is not None else {}
        return self.client.request(method, path, headers=headers, **options)

    def ok(self, who: str, method: str, path: str, **options: Any) -> Any:
        response = self.call(who, method, path, **options)
        assert response.status_code == 200, (method, path, response.status_code, response.text)
        return response.json()

    def node(self, label: str, session: str = SESSION, who: str = "alice", **fields: Any) -> dict[str, Any]:
        body = {"session_id": session, "node_type": "fact", "label": label, **fields}
        response = self.call(who, "POST", "/graph/nodes", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def edge(self, source: int, target: int, session: str = SESSION) -> dict[str, Any]:
        body = {"session_id": session, "source_id": source, "target_id": target, "edge_type": "RELATES_TO"}
        response = self.call("alice", "POST", "/graph/edges", json=body)
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    def enable(self, session: str = SESSION, enabled: bool = True) -> None:
        self.ok("link", "POST", f"/sync/enable/{session}/default", json={"enabled": enabled})

    def register(self, instance_id: str) -> None:
        """Register a member id here as the `link` account, so what it reports about itself counts."""
        member = {
            "instance_id": instance_id, "hostname": "127.0.0.1", "port": 3001, "capabilities": [],
            "agent_profiles": [], "base_url": "https://127.0.0.1:3001", "fingerprint": "AA:" * 31 + "AA",
        }  # fmt: skip
        self.ok("link", "POST", "/registry/register", json=member)

    def pull(self, other: Member, vector: Any = None, **fields: Any) -> dict[str, Any]:
        """What `other` serves us past `vector`, asked for as this member."""
        body = {
            "session_id": SESSION,
            "requesting_instance": self.instance_id,
            "vector_clock": vector,
            **fields,
        }
        answer: dict[str, Any] = other.ok("link", "POST", "/sync/request", json=body)
        return answer

    def apply(self, payload: dict[str, Any], sender: Member | None = None) -> Any:
        params = {"sending_instance": sender.instance_id} if sender is not None else {}
        return self.call("link", "POST", "/sync/apply", json=payload, params=params)

    def graph(self, session: str = SESSION) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The visible graph by uid: nodes (uid, type, label, properties), edges (uid, ends, type, weight)."""
        nodes = self.ok("root", "GET", "/graph/nodes", params={"session_id": session, "limit": 1000})["nodes"]
        edges = self.ok("root", "GET", "/graph/edges", params={"session_id": session, "limit": 1000})["edges"]
        uid = {n["id"]: n["uid"] for n in nodes}
        return (
            sorted((n["uid"], n["node_type"], n["label"], json.dumps(n["properties"])) for n in nodes),
            sorted(
                (e["uid"], uid[e["source_id"]], uid[e["target_id"]], e["edge_type"], e["weight"])
                for e in edges
            ),
        )

    def changelog(self) -> int:
        async def count() -> int:
            async with self.state.store.connect() as conn:
                return int(await conn.scalar(select(func.count()).select_from(graph_changelog)) or 0)

        result: int = self.client.blocking_portal.call(count)
        return result


def build(
    home: Path, database: str = "", accounts: tuple[tuple[str, str], ...] = ACCOUNTS
) -> Iterator[Member]:
    home.mkdir(mode=0o700, exist_ok=True)
    secret = "y" * 40
    (home / "spec-ai.config.toml").write_text(
        f'[auth]\nenabled = true\ntoken_secret = "{secret}"\n{database}'
    )
    settings = load_settings(env={"SPECAI_HOME": str(home)}, cwd=home)
    tokens = {}
    for name, role in accounts:
        user = add_account(settings.credentials_file, name, "pw-one-two", role)  # type: ignore[arg-type]
        token, _ = auth.issue_token(secret, name, 600, user_id=user.id, generation=user.token_generation)
        tokens[name] = {"Authorization": f"Bearer {token}"}
    seed_users(settings)
    app = create_app(settings, cert=read_cert(ensure_server_cert(settings).cert))
    with TestClient(app) as client:
        yield Member(client, tokens, home)


@pytest.fixture(params=ENGINES)
def a(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Member]:
    """A server on each engine."""
    yield from build(tmp_path / "a", database_toml(request))


@pytest.fixture
def b(tmp_path: Path) -> Iterator[Member]:
    """A second server (SQLite), for exchanges with `a`."""
    yield from build(tmp_path / "b")


def routes(session: str = SESSION, graph: str = "default") -> list[tuple[str, str, Any]]:
    """Every /sync/* route, aimed at `session` and `graph`."""
    return [
        (
            "POST",
            "/sync/request",
            {"session_id": session, "graph_name": graph, "requesting_instance": "peer-1"},
        ),
        ("POST", "/sync/apply", {"session_id": session, "graph_name": graph}),
        ("GET", f"/sync/status/{session}/{graph}", None),
        ("POST", f"/sync/enable/{session}/{graph}", {"enabled": True}),
        ("GET", f"/sync/configs/{session}", None),
        ("POST", f"/sync/bulk/{session}", {"graphs": [graph], "enabled": True}),
        ("POST", f"/sync/configure/{session}/{graph}", {"sync_enabled": True}),
        ("GET", "/sync/conflicts", None),
        ("POST", f"/sync/now/{session}/{graph}", None),
    ]


class FakeLink:
    """The coordinator's interface as the routes use it (the real one is tested with it, in its own module)."""

    def __init__(self, states: list[dict[str, Any]], results: list[dict[str, Any]]) -> None:
        self.states = states
        self.results = results
        self.pulled: list[str] = []

    def peer_states(self, session_id: str) -> list[dict[str, Any]]:
        return self.states

    async def run_now(self, session_id: str) -> list[dict[str, Any]]:
        self.pulled.append(session_id)
        return self.results


# --- who may call --------------------------------------------------------------------------------------------------


def test_every_sync_route_needs_a_token_and_a_mesh_or_admin_account(a: Member) -> None:
    a.node("first")
    for method, path, body in routes():
        assert_error(a.call(None, method, path, json=body), 401, "unauthorized")
        assert_error(a.call("carol", method, path, json=body), 403, "forbidden")
        assert_error(a.call("alice", method, path, json=body), 403, "forbidden")  # even the session's owner
    for who in ("link", "root"):
        for method, path, body in routes():
            assert a.call(who, method, path, json=body).status_code not in (401, 403), (who, method, path)


# --- request ---------------------------------------------------------------------------------------------------------


def test_request_serves_everything_then_only_what_is_new(a: Member) -> None:
    first, second = a.node("first", properties={"k": 1}), a.node("second")
    a.edge(first["id"], second["id"])
    assert_error(a.call("link", "POST", "/sync/request", json=routes()[0][2]), 404, "sync_not_enabled")
    a.enable()  # what was there before is offered too
    nothing: Any
    for nothing in (None, "", "{}", {}, {"versions": {}}, '{"versions": {}}'):
        full = a.ok("link", "POST", "/sync/request", json={**routes()[0][2], "vector_clock": nothing})
        assert full["success"] is True
        assert full["message"] == "Full sync completed"
        payload = full["payload"]
        assert set(payload) == {
            "session_id", "graph_name", "sync_type", "vector_clock", "since_clock",
            "nodes", "edges", "tombstones", "more", "owner", "correlation_id", "conflict_info",
        }  # fmt: skip
        assert (payload["session_id"], payload["graph_name"], payload["sync_type"]) == (
            SESSION,
            "default",
            "full",
        )
        assert sorted(n["label"] for n in payload["nodes"]) == ["first", "second"]
        assert [e["source_uid"] for e in payload["edges"]] == [first["uid"]]
        assert (payload["tombstones"], payload["more"], payload["owner"]) == ([], False, "alice")
        assert payload["vector_clock"] == {"versions": {a.instance_id: 3}}
    a.node("third")
    vector = full["payload"]["vector_clock"]
    for form in (vector, json.dumps(vector)):  # an object, or the original's JSON string
        later = a.ok("link", "POST", "/sync/request", json={**routes()[0][2], "vector_clock": form})
        assert later["message"] == "Incremental sync completed"
        assert later["payload"]["sync_type"] == "incremental"
        assert [n["label"] for n in later["payload"]["nodes"]] == ["third"]
        assert later["payload"]["since_clock"] == vector
        assert later["payload"]["vector_clock"] == {"versions": {a.instance_id: 4}}


def test_request_pages_by_limit_and_says_when_there_is_more(a: Member) -> None:
    for i in range(5):
        a.node(f"n{i}")
    a.enable()
    vector: Any = None
    labels: list[str] = []
    pages = 0
    while True:
        page = a.ok(
            "link", "POST", "/sync/request", json={**routes()[0][2], "vector_clock": vector, "limit": 2}
        )
        labels += [n["label"] for n in page["payload"]["nodes"]]
        vector, pages = page["payload"]["vector_clock"], pages + 1
        if not page["payload"]["more"]:
            break
    assert sorted(labels) == [f"n{i}" for i in range(5)]
    assert pages == 3


def test_request_refuses_bad_vectors_limits_and_instance_ids(a: Member) -> None:
    a.node("first")
    a.enable()
    base = routes()[0][2]
    bad: Any
    for bad in (
        {"a": 1},
        "not json",
        '{"a": 1}',
        {"versions": {"x": -1}},
        {"versions": {"x": "1"}},
        {"versions": []},
    ):
        body = assert_error(
            a.call("link", "POST", "/sync/request", json={**base, "vector_clock": bad}), 422, "unprocessable"
        )
        assert "vector_clock" in body["error"]
    for limit in (0, engine.MAX_PAGE + 1):
        assert_error(
            a.call("link", "POST", "/sync/request", json={**base, "limit": limit}), 422, "unprocessable"
        )
    assert_error(
        a.call("link", "POST", "/sync/request", json={**base, "vector_clock": 5}), 400, "invalid_request"
    )
    bad_id = {**base, "requesting_instance": "has space"}
    assert_error(a.call("link", "POST", "/sync/request", json=bad_id), 400, "invalid_request")
    missing = {"session_id": SESSION}
    assert_error(a.call("link", "POST", "/sync/request", json=missing), 400, "invalid_request")


def test_an_unknown_graph_is_422_on_every_route_that_names_one(a: Member) -> None:
    a.node("first")
    a.enable()
    for method, path, body in routes(graph="other"):
        if path.startswith(("/sync/configs", "/sync/conflicts")):
            continue  # no graph in them
        response = a.call("link", method, path, json=body)
        if path.startswith("/sync/bulk"):
            assert_error(response, 422, "bulk_failed")
        else:
            body = assert_error(response, 422, "unknown_graph")
            assert "default" in body["error"]


def test_a_session_not_synced_is_404_for_the_exchange_and_off_in_its_status(a: Member) -> None:
    a.node("first")
    request = {"session_id": SESSION, "requesting_instance": "peer-1"}
    assert_error(a.call("link", "POST", "/sync/request", json=request), 404, "sync_not_enabled")
    assert_error(a.call("link", "POST", "/sync/apply", json={"session_id": SESSION}), 404, "sync_not_enabled")
    a.state.sync_link = FakeLink([], [])
    assert_error(a.call("link", "POST", f"/sync/now/{SESSION}/default"), 404, "sync_not_enabled")
    assert a.state.sync_link.pulled == []
    status = a.ok("link", "GET", f"/sync/status/{SESSION}/default")
    assert (status["sync_enabled"], status["vector_clock"], status["last_sync_at"]) == (
        False,
        {"versions": {}},
        None,
    )
    a.enable()
    a.enable(enabled=False)
    assert_error(a.call("link", "POST", "/sync/request", json=request), 404, "sync_not_enabled")


# --- apply and two members ---------------------------------------------------------------------------------------------


def test_two_servers_converge_through_the_routes(a: Member, b: Member) -> None:
    first, second = a.node("first", properties={"k": [1, 2]}), a.node("second")
    a.edge(first["id"], second["id"])
    a.enable()
    b.enable()
    payload = b.pull(a)["payload"]
    applied = b.apply(payload, sender=a)
    assert applied.status_code == 200, applied.text
    body = applied.json()
    assert (body["success"], body["message"]) == (True, "Sync applied successfully")
    assert body["stats"] == {
        "nodes_applied": 2, "edges_applied": 1, "tombstones_applied": 0, "conflicts_detected": 0,
        "conflicts_resolved": 0, "duplicates": 0, "sync_type": "Full",
    }  # fmt: skip
    assert body["vector_clock"] == {"versions": {a.instance_id: 3}}
    assert b.graph() == a.graph()
    # and back: B's own write reaches A, and each knows what the other holds
    b.node("from b")
    back = a.pull(b, vector=body["vector_clock"])["payload"]
    assert [n["label"] for n in back["nodes"]] == ["from b"]
    assert a.apply(back, sender=b).status_code == 200
    assert a.graph() == b.graph()
    assert len(a.graph()[0]) == 3
    peers = {p["instance_id"]: p for p in a.ok("link", "GET", f"/sync/status/{SESSION}/default")["peers"]}
    # an account's report counts only for an instance it registered here: b's id is nobody's on a yet
    assert b.instance_id not in peers
    a.register(b.instance_id)
    b.pull(a, vector=body["vector_clock"])
    assert a.apply(back, sender=b).status_code == 200
    peers = {p["instance_id"]: p for p in a.ok("link", "GET", f"/sync/status/{SESSION}/default")["peers"]}
    assert peers[b.instance_id]["reported_at"] is not None  # it asked
    assert peers[b.instance_id]["pulled_at"] is not None  # and it sent
    assert peers[b.instance_id]["state"] is None  # no coordinator here


def test_applying_the_same_payload_twice_changes_neither_graph_nor_changelog(a: Member, b: Member) -> None:
    first, second = a.node("first"), a.node("second")
    a.edge(first["id"], second["id"])
    a.enable()
    b.enable()
    payload = b.pull(a)["payload"]
    assert b.apply(payload, sender=a).status_code == 200
    graph, changelog = b.graph(), b.changelog()
    again = b.apply(payload, sender=a)
    assert again.status_code == 200, again.text
    stats = again.json()["stats"]
    assert (stats["nodes_applied"], stats["edges_applied"], stats["duplicates"]) == (0, 0, 3)
    assert (b.graph(), b.changelog()) == (graph, changelog)
    own = a.apply(payload)  # a payload of A's own changes, back at A: nothing either
    assert own.status_code == 200
    assert own.json()["stats"]["duplicates"] == 3


def test_apply_refuses_bad_payloads_with_what_is_wrong(a: Member, b: Member) -> None:
    a.node("first")
    a.enable()
    b.enable()
    payload = b.pull(a)["payload"]
    node = payload["nodes"][0]
    broken = [
        {**payload, "nodes": "x"},
        {**payload, "nodes": [{**node, "seq": 0}]},
        {**payload, "nodes": [{**node, "node_type": "planet"}]},
        {**payload, "nodes": [{**node, "stamp": [1, 2, "someone-else"]}]},
        {**payload, "vector_clock": {"a": 1}},
        {**payload, "nodes": [1]},
    ]
    for bad in broken:
        code = "invalid_request" if bad["nodes"] == "x" else "unprocessable"
        assert_error(b.apply(bad, sender=a), 400 if code == "invalid_request" else 422, code)
    too_many = {**payload, "nodes": [{}] * 10_001}
    body = assert_error(b.apply(too_many, sender=a), 422, "unprocessable")
    assert "at most 10000 changes" in body["error"]
    huge = {**payload, "nodes": [node] * 5000}  # over the default 1 MiB `[server] max_body_bytes`
    assert_error(b.apply(huge, sender=a), 413, "payload_too_large")
    assert b.graph() == ([], [])


def test_a_session_owned_by_another_name_here_is_409(a: Member, b: Member) -> None:
    a.node("alice's")
    a.enable()
    b.node("carol's", who="carol")  # the same session id, owned by carol on B
    b.enable()
    payload = b.pull(a)["payload"]
    before = b.graph()
    body = assert_error(b.apply(payload, sender=a), 409, "owner_mismatch")
    assert "alice" in body["error"]
    assert b.graph() == before


def test_an_owner_without_an_account_here_is_409(tmp_path: Path, a: Member) -> None:
    a.node("alice's")
    a.enable()
    for lone in build(tmp_path / "lone", accounts=(("root", "admin"), ("link", "mesh"))):
        lone.enable()
        payload = lone.pull(a)["payload"]
        body = assert_error(lone.apply(payload, sender=a), 409, "owner_mismatch")
        assert "auth add-user" in body["error"]


def test_a_change_stamped_too_far_in_the_future_is_422_clock_skew(a: Member, b: Member) -> None:
    a.node("first")
    a.enable()
    b.enable()
    payload = copy.deepcopy(b.pull(a)["payload"])
    payload["nodes"][0]["stamp"][0] += 10 * 60 * 1000  # ten minutes ahead; the limit is 60 s
    body = assert_error(b.apply(payload, sender=a), 422, "clock_skew")
    assert body["details"]["origin"] == a.instance_id
    assert b.graph() == ([], [])


def test_a_peer_token_acts_for_its_member_only_on_sync_routes(a: Member, b: Member) -> None:
    """A is the registry; B joined it and accepts the peer tokens A signs."""
    for instance_id in ("a-1", b.instance_id):
        register = {
            "instance_id": instance_id, "hostname": "127.0.0.1", "port": 4000, "capabilities": [],
            "agent_profiles": [], "base_url": "https://127.0.0.1:4000", "fingerprint": "AA:" * 31 + "AA",
        }  # fmt: skip
        assert a.call("link", "POST", "/registry/register", json=register).status_code == 200
    pem = ensure_server_cert(a.state.settings).cert.read_bytes()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    b.state.trust_registry(der, a.instance_id)
    issued = a.call("link", "POST", "/registry/peer-token", json={"source": "a-1", "audience": b.instance_id})
    assert issued.status_code == 200, issued.text
    b.tokens["peer"] = {"Authorization": f"Bearer {issued.json()['token']}"}
    b.node("on b")
    b.enable()
    asked = b.call(
        "peer", "POST", "/sync/request", json={"session_id": SESSION, "requesting_instance": "a-1"}
    )
    assert asked.status_code == 200, asked.text
    impostor = {"session_id": SESSION, "requesting_instance": "someone-else"}
    body = assert_error(b.call("peer", "POST", "/sync/request", json=impostor), 403, "forbidden")
    assert "a-1" in body["error"]
    payload = asked.json()["payload"]
    assert b.call("peer", "POST", "/sync/apply", json=payload).status_code == 200  # its member: a-1
    assert_error(
        b.call("peer", "POST", "/sync/apply", json=payload, params={"sending_instance": "other"}),
        403,
        "forbidden",
    )
    assert_error(b.call("peer", "GET", "/graph/nodes", params={"session_id": SESSION}), 401, "unauthorized")
    peers = {p["instance_id"]: p for p in b.ok("link", "GET", f"/sync/status/{SESSION}/default")["peers"]}
    assert set(peers) == {"a-1"}
    assert peers["a-1"]["reported_at"] is not None
    assert peers["a-1"]["pulled_at"] is not None  # the apply was recorded as a-1's


def test_sending_instance_in_the_query_and_the_body_must_agree(a: Member, b: Member) -> None:
    a.node("first")
    a.enable()
    b.enable()
    payload = {**b.pull(a)["payload"], "sending_instance": "x-1"}
    b.register("x-1")
    response = b.call("link", "POST", "/sync/apply", json=payload, params={"sending_instance": "x-2"})
    assert_error(response, 400, "invalid_request")
    assert b.apply(payload).status_code == 200  # the body field alone
    peers = [p["instance_id"] for p in b.ok("link", "GET", f"/sync/status/{SESSION}/default")["peers"]]
    assert peers == ["x-1"]


# --- settings ----------------------------------------------------------------------------------------------------------


def test_enable_configs_and_configure(a: Member) -> None:
    a.node("first")
    on = a.ok("link", "POST", f"/sync/enable/{SESSION}/default", json={"enabled": True})
    assert on == {"success": True, "message": f"Sync enabled for graph {SESSION}/default", "enabled": True}
    configured = a.ok(
        "root",
        "POST",
        f"/sync/configure/{SESSION}/default",
        json={
            "sync_enabled": True,
            "conflict_resolution_strategy": "last_write_wins",
            "sync_interval_seconds": 30,
        },
    )
    assert configured == {
        "success": True,
        "message": f"Sync configuration updated for graph {SESSION}/default",
        "config": {
            "sync_enabled": True,
            "conflict_resolution_strategy": "last_write_wins",
            "sync_interval_seconds": 30,
        },
    }
    off = a.ok("link", "POST", f"/sync/enable/{SESSION}/default", json={"enabled": False})
    assert off["message"] == f"Sync disabled for graph {SESSION}/default"
    configs = a.ok("link", "GET", f"/sync/configs/{SESSION}")
    assert configs == {
        "success": True,
        "session_id": SESSION,
        "graphs": [
            {
                "graph_name": "default",
                "sync_enabled": False,
                "conflict_resolution_strategy": "last_write_wins",
                "sync_interval_seconds": 30,
                "last_sync_at": None,
            }
        ],
    }  # fmt: skip; enabling and disabling kept the other settings
    for bad in (
        {"sync_enabled": True, "conflict_resolution_strategy": "manual"},
        {"sync_enabled": True, "sync_interval_seconds": 0},
    ):
        assert_error(
            a.call("link", "POST", f"/sync/configure/{SESSION}/default", json=bad), 422, "unprocessable"
        )
    assert_error(
        a.call("link", "POST", f"/sync/configure/{SESSION}/default", json={}), 400, "invalid_request"
    )
    assert_error(
        a.call("link", "POST", f"/sync/enable/{SESSION}/default", json={"enabled": "yes"}),
        400,
        "invalid_request",
    )
    assert_error(a.call("link", "GET", f"/sync/configs/{'x' * 129}"), 400, "invalid_request")


def test_bulk_answers_200_only_when_every_graph_changed(a: Member) -> None:
    a.node("first")
    done = a.ok("link", "POST", f"/sync/bulk/{SESSION}", json={"graphs": ["default"], "enabled": True})
    assert done == {
        "success": True,
        "message": "Sync enabled for 1 graph",
        "updated": ["default"],
        "failed": [],
    }
    response = a.call(
        "link", "POST", f"/sync/bulk/{SESSION}", json={"graphs": ["default", "other"], "enabled": False}
    )
    body = assert_error(response, 422, "bulk_failed")
    details = body["details"]
    assert details["success"] is False
    assert details["message"] == "Sync disabled for 1 graph"
    assert details["updated"] == ["default"]
    assert [(f["graph"], f["code"]) for f in details["failed"]] == [("other", "unknown_graph")]
    assert "does not exist" in details["failed"][0]["error"]
    assert (
        a.ok("link", "GET", f"/sync/status/{SESSION}/default")["sync_enabled"] is False
    )  # `default` did change
    too_many = {"graphs": [f"g{i}" for i in range(schemas.MAX_BULK + 1)], "enabled": True}
    assert_error(a.call("link", "POST", f"/sync/bulk/{SESSION}", json=too_many), 400, "invalid_request")


# --- status, now, conflicts -----------------------------------------------------------------------------------------------


def test_status_merges_what_peers_reported_with_the_coordinators_view(a: Member) -> None:
    a.node("first")
    a.enable()
    a.ok("link", "POST", "/sync/request", json={"session_id": SESSION, "requesting_instance": "peer-1"})
    assert a.ok("link", "GET", f"/sync/status/{SESSION}/default")["peers"] == []  # not its instance: ignored
    a.register("peer-1")
    a.ok("link", "POST", "/sync/request", json={"session_id": SESSION, "requesting_instance": "peer-1"})
    status = a.ok("link", "GET", f"/sync/status/{SESSION}/default")
    assert status["coordinator_running"] is False
    assert (status["session_id"], status["graph_name"], status["instance_id"]) == (
        SESSION,
        "default",
        a.instance_id,
    )
    assert status["vector_clock"] == {"versions": {a.instance_id: 1}}
    assert status["pending_changes"] == 1  # peer-1 asked with nothing held
    (peer,) = status["peers"]
    assert peer["instance_id"] == "peer-1"
    assert peer["their_vector"] == {"versions": {}}
    assert peer["reported_at"].endswith("+00:00")
    a.state.sync_link = FakeLink(
        [
            {"instance_id": "peer-1", "state": "refused", "last_error": "401 unauthorized: invalid peer token",
             "last_ok_at": None, "base_url": "https://10.0.0.2:3000", "failures": 3,
             "next_try_at": "2027-01-15T08:05:00+00:00"},
            {"instance_id": "peer-2", "state": "untrusted", "last_error": "certificate changed",
             "last_ok_at": 1_800_000_000.0, "base_url": "https://10.0.0.3:3000"},
        ],
        [],
    )  # fmt: skip
    status = a.ok("link", "GET", f"/sync/status/{SESSION}/default")
    assert status["coordinator_running"] is True
    first, second = status["peers"]
    assert (first["instance_id"], first["state"], first["base_url"]) == (
        "peer-1",
        "refused",
        "https://10.0.0.2:3000",
    )
    assert first["last_error"] == "401 unauthorized: invalid peer token"
    assert first["reported_at"] == peer["reported_at"]  # merged with what it reported
    assert first["next_try_at"] == "2027-01-15T08:05:00+00:00"
    assert second["next_try_at"] is None
    assert (second["instance_id"], second["state"], second["their_vector"]) == (
        "peer-2",
        "untrusted",
        {"versions": {}},
    )
    assert second["last_ok_at"].startswith("2027-01-15T08:00:00")
    assert set(first) == {
        "instance_id", "their_vector", "reported_at", "pulled_at", "state", "last_error", "last_ok_at",
        "next_try_at", "base_url",
    }  # fmt: skip


def test_sync_now_needs_the_coordinator_and_returns_each_peers_result(a: Member) -> None:
    a.node("first")
    a.enable()
    body = assert_error(a.call("link", "POST", f"/sync/now/{SESSION}/default"), 503, "sync_not_running")
    assert "[sync] enabled" in body["error"]
    results: list[dict[str, Any]] = [
        {"instance_id": "peer-1", "state": "ok", "applied": 3},
        {"instance_id": "peer-2", "state": "refused"},
    ]
    a.state.sync_link = FakeLink([], results)
    answer = a.ok("root", "POST", f"/sync/now/{SESSION}/default")
    assert answer == {"session_id": SESSION, "graph_name": "default", "peers": results}
    assert a.state.sync_link.pulled == [SESSION]
    assert_error(a.call("root", "POST", f"/sync/now/{SESSION}/other"), 422, "unknown_graph")


def test_conflicts_are_recorded_on_both_members_with_one_winner_and_paged(a: Member, b: Member) -> None:
    made = [a.node(f"n{i}") for i in range(3)]
    a.enable()
    b.enable()
    assert b.apply(b.pull(a)["payload"], sender=a).status_code == 200
    on_b = {
        n["uid"]: n["id"]
        for n in b.ok("root", "GET", "/graph/nodes", params={"session_id": SESSION})["nodes"]
    }
    for node in made:  # the same field, concurrently on both
        assert (
            a.call("alice", "PATCH", f"/graph/nodes/{node['id']}", json={"label": "by a"}).status_code == 200
        )
        assert (
            b.call("alice", "PATCH", f"/graph/nodes/{on_b[node['uid']]}", json={"label": "by b"}).status_code
            == 200
        )
    vector_a = a.ok("link", "GET", f"/sync/status/{SESSION}/default")["vector_clock"]
    vector_b = b.ok("link", "GET", f"/sync/status/{SESSION}/default")["vector_clock"]
    assert b.apply(b.pull(a, vector=vector_b)["payload"], sender=a).status_code == 200
    assert a.apply(a.pull(b, vector=vector_a)["payload"], sender=b).status_code == 200
    assert a.graph() == b.graph()
    winner = {uid: label for uid, _, label, _ in a.graph()[0]}  # the same on both (the later stamp)
    assert set(winner.values()) <= {"by a", "by b"}
    for member in (a, b):
        page = member.ok("link", "GET", "/sync/conflicts", params={"limit": 2})
        assert len(page["conflicts"]) == 2
        assert page["next_cursor"] is not None
        rest = member.ok("link", "GET", "/sync/conflicts", params={"limit": 2, "cursor": page["next_cursor"]})
        assert (len(rest["conflicts"]), rest["next_cursor"]) == (1, None)
        listed = page["conflicts"] + rest["conflicts"]
        assert [c["id"] for c in listed] == sorted((c["id"] for c in listed), reverse=True)  # newest first
        assert {c["entity_id"] for c in listed} == {n["uid"] for n in made}
        for c in listed:
            assert set(c) == {
                "id", "session_id", "graph_name", "entity_type", "entity_id", "field", "resolution",
                "local_version", "remote_version", "winner_stamp", "loser_stamp", "detected_at",
            }  # fmt: skip
            assert (c["session_id"], c["entity_type"], c["field"]) == (SESSION, "node", "label")
            assert {c["local_version"], c["remote_version"]} == {"by a", "by b"}
            won = c["local_version"] if c["resolution"] == "KeepLocal" else c["remote_version"]
            assert won == winner[c["entity_id"]]
            assert c["winner_stamp"] > c["loser_stamp"]
        mine = member.ok("link", "GET", "/sync/conflicts", params={"session_id": SESSION})
        assert len(mine["conflicts"]) == 3
        assert member.ok("link", "GET", "/sync/conflicts", params={"session_id": "other"})["conflicts"] == []
    assert_error(a.call("link", "GET", "/sync/conflicts", params={"cursor": "x"}), 400, "invalid_request")
    assert_error(a.call("link", "GET", "/sync/conflicts", params={"limit": 0}), 400, "invalid_request")


# --- the description ----------------------------------------------------------------------------------------------------


def test_the_wire_constants_follow_the_engine_and_the_routes_are_described(a: Member) -> None:
    assert (schemas.DEFAULT_PAGE, schemas.MAX_PAGE) == (engine.DEFAULT_PAGE, engine.MAX_PAGE)
    document = a.client.get("/schema/openapi.json").json()
    operations = {
        (method, path): op for path, item in document["paths"].items() if path.startswith("/sync/")
        for method, op in item.items()
    }  # fmt: skip
    assert set(operations) == {
        ("post", "/sync/request"), ("post", "/sync/apply"), ("get", "/sync/status/{session_id}/{graph_name}"),
        ("post", "/sync/enable/{session_id}/{graph_name}"), ("get", "/sync/configs/{session_id}"),
        ("post", "/sync/bulk/{session_id}"), ("post", "/sync/configure/{session_id}/{graph_name}"),
        ("get", "/sync/conflicts"), ("post", "/sync/now/{session_id}/{graph_name}"),
    }  # fmt: skip
    schemas_ = document["components"]["schemas"]
    assert {"SyncRequestIn", "GraphSyncPayload", "GraphSyncPayloadIn", "SyncStatusOut", "PeerOut"} <= set(
        schemas_
    )
    assert "sending_instance" in schemas_["GraphSyncPayloadIn"]["properties"]
    apply = operations["post", "/sync/apply"]
    assert "sending_instance" in {p["name"] for p in apply["parameters"]}
    assert "owner_mismatch" in apply["responses"]["409"]["description"]
    assert (
        "sync_not_running"
        in operations["post", "/sync/now/{session_id}/{graph_name}"]["responses"]["503"]["description"]
    )
    assert {"sync_not_enabled"} <= set(apply["responses"]["404"]["description"].replace("`", " ").split())


# --- live: two real servers -----------------------------------------------------------------------------------------------


@pytest.mark.live
def test_two_real_servers_exchange_over_tls_with_the_real_client(tmp_path: Path) -> None:
    from specai.client import SpecaiClient
    from specai.client.sync import SyncClient

    homes = [make_home(tmp_path, name) for name in ("a", "b")]
    for home in homes:
        add_user(home, "root", role="admin")
        (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\n")
    servers = [ServerProcess(home).start() for home in homes]
    try:
        known = KnownServers(make_home(tmp_path, "client"))
        clients = [
            SpecaiClient.connect(s.url, known, fingerprint=s.fingerprint, token=s.login("root"))
            for s in servers
        ]
        ids = [(home / "instance_id").read_text().strip() for home in homes]
        with clients[0] as on_a, clients[1] as on_b:
            first = on_a.create_node(SESSION, "fact", "first", {"k": "v"})
            second = on_a.create_node(SESSION, "concept", "second")
            on_a.create_edge(SESSION, first.id, second.id, "RELATES_TO")
            sync_a, sync_b = SyncClient(on_a), SyncClient(on_b)
            assert sync_a.enable(SESSION).enabled is True
            assert sync_b.enable(SESSION).enabled is True
            asked = sync_a.request(SESSION, ids[1])
            assert asked.message == "Full sync completed"
            applied = sync_b.apply(asked.payload, sending_instance=ids[0])
            assert applied.stats.nodes_applied == 2
            assert applied.stats.edges_applied == 1
            assert applied.vector_clock.versions == {ids[0]: 3}
            again = sync_b.apply(asked.payload, sending_instance=ids[0])
            assert again.stats.duplicates == 3
            nodes = {n.uid: (n.node_type, n.label, n.properties) for n in on_b.graph_nodes(SESSION).nodes}
            assert nodes == {
                first.uid: ("fact", "first", {"k": "v"}),
                second.uid: ("concept", "second", {}),
            }
            status = sync_a.status(SESSION)
            assert status.sync_enabled is True
            assert [p.instance_id for p in status.peers] == [ids[1]]
            assert sync_b.status(SESSION).last_sync_at is not None
    finally:
        for server in servers:
            server.stop()
