"""Graph sync end to end: three real `specai server` processes in a mesh over pinned TLS (the registry and one
member on SQLite, one member on PostgreSQL), each with `[sync] enabled` for the same session, which the same user
`alice` owns on every member. Edits go through the graph API; the coordinators pull every interval and push on
commit; every scenario ends when the three `/graph` dumps (uids, labels, properties, edges by endpoint uids) are
identical.
"""

from __future__ import annotations

import functools
import json
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import pg_execute
from live import PASSWORD, Cluster, Node, add_user, run_cli, wait_until

pytestmark = pytest.mark.live

SESSION = "shared"
INTERVAL = 0.5  # [sync] interval_secs
SETTLE = 30.0  # how long convergence may take after the last edit
CONFIG = """\
[auth]
enabled = true

[mesh]
username = "mesh-{name}"
password_source = "env:MESH_PASSWORD"
heartbeat_interval_secs = 1
leader_timeout_secs = 3

[sync]
enabled = true
interval_secs = {interval}
namespaces = [{{session_id = "{session}", graph_name = "default"}}]
page_size = 50
retry_interval_secs = 2
"""


@dataclass
class SyncNode(Node):
    """A member: `http` is its admin `root` (for /sync), `alice` the owner of the synced session."""

    alice: httpx.Client | None = None

    def start(self) -> SyncNode:
        super().start()
        assert self.process is not None
        self.alice = self.process.client(self.process.login("alice"))
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.alice is not None:
            self.alice.close()
            self.alice = None
        super().stop(sig)

    def graph(self) -> httpx.Client:
        assert self.alice is not None
        return self.alice

    def admin(self) -> httpx.Client:
        assert self.http is not None
        return self.http

    def listing(self, kind: str) -> list[dict[str, Any]]:
        """Every node or edge of the session, page by page."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"session_id": SESSION, "limit": 1000}
            if cursor:
                params["cursor"] = cursor
            response = self.graph().get(f"/graph/{kind}", params=params)
            if response.status_code == 404:  # nothing arrived here yet: the session does not exist
                return []
            assert response.status_code == 200, response.text
            body = response.json()
            found += body[kind]
            cursor = body["next_cursor"]
            if not cursor:
                return found

    def dump(self) -> dict[str, Any]:
        """The session as uids: nodes (type, label, properties), edges (endpoint uids, type, predicate, weight,
        properties); fails on a duplicate uid or an edge whose endpoint is not shown."""
        nodes = self.listing("nodes")
        edges = self.listing("edges")
        uid_of = {n["id"]: n["uid"] for n in nodes}
        assert len(uid_of) == len({n["uid"] for n in nodes}) == len(nodes), "duplicate nodes"
        assert len({e["uid"] for e in edges}) == len(edges), "duplicate edges"
        shown_edges = {}
        for e in edges:
            assert e["source_id"] in uid_of, f"edge {e['uid']} without its source"
            assert e["target_id"] in uid_of, f"edge {e['uid']} without its target"
            shown_edges[e["uid"]] = (
                uid_of[e["source_id"]],
                uid_of[e["target_id"]],
                e["edge_type"],
                e["predicate"],
                e["weight"],
                e["properties"] or {},
            )
        return {
            "nodes": {n["uid"]: (n["node_type"], n["label"], n["properties"]) for n in nodes},
            "edges": shown_edges,
        }

    def status(self) -> dict[str, Any]:
        response = self.admin().get(f"/sync/status/{SESSION}/default")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def peer_states(self) -> dict[str, dict[str, Any]]:
        return {p["instance_id"]: p for p in self.status()["peers"]}

    def vector(self) -> dict[str, int]:
        return dict(self.status()["vector_clock"]["versions"])

    def conflicts(self) -> list[dict[str, Any]]:
        response = self.admin().get("/sync/conflicts", params={"session_id": SESSION, "limit": 1000})
        assert response.status_code == 200, response.text
        return list(response.json()["conflicts"])


def make_node(
    root: Path, name: str, mesh_users: tuple[str, ...] = (), database_url: str | None = None
) -> SyncNode:
    home = root / name
    home.mkdir(mode=0o700)
    add_user(home, "root", role="admin")
    add_user(home, "alice")
    for user in mesh_users:
        add_user(home, user, role="mesh")
    database = f'\n[database]\nurl = "{database_url}"\n' if database_url else ""
    config = CONFIG.format(name=name, interval=INTERVAL, session=SESSION)
    (home / "spec-ai.config.toml").write_text(config + database)
    return SyncNode(name, home, env={"MESH_PASSWORD": PASSWORD})


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Cluster[SyncNode]]:
    """Registry `a` (SQLite), members `b` (PostgreSQL) and `c` (SQLite), joined and syncing with each other."""
    root = tmp_path_factory.mktemp("sync")
    pg_execute(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    with Cluster[SyncNode]() as nodes:
        registry = nodes.start(make_node(root, "a", mesh_users=("mesh-b", "mesh-c")))
        assert registry.process is not None
        join = ("--join", registry.process.url, "--join-fingerprint", registry.process.fingerprint)
        for name, url in (("b", pg_url), ("c", None)):
            node = make_node(root, name, database_url=url)
            node.args = join
            nodes.start(node)
        wait_until(lambda: all_ok(nodes), timeout=30, what="every member syncing with the two others")
        yield nodes


def all_ok(nodes: Cluster[SyncNode]) -> bool:
    for node in nodes.values():
        states = node.peer_states()
        others = {n.instance_id for n in nodes.values() if n is not node}
        if any(states.get(other, {}).get("state") != "ok" for other in others):
            return False
    return True


def converged(nodes: Cluster[SyncNode], timeout: float = SETTLE) -> dict[str, Any]:
    """Wait until the three dumps and version vectors are identical; the common dump."""

    def same() -> dict[str, Any] | None:
        dumps = [node.dump() for node in nodes.values()]
        if any(d != dumps[0] for d in dumps):
            return None
        vectors = [node.vector() for node in nodes.values()]
        return {"dump": dumps[0]} if all(v == vectors[0] for v in vectors) else None

    try:
        found: dict[str, Any] = wait_until(
            same, timeout=timeout, every=0.2, what="the three graphs to converge"
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_diagnosis(nodes)}") from None
    return dict(found["dump"])


def _diagnosis(nodes: Cluster[SyncNode]) -> str:
    """What each member holds and says, for a convergence that did not happen."""
    lines = []
    for node in nodes.values():
        try:
            dump = node.dump()
            lines.append(
                f"{node.name} {node.instance_id}: {len(dump['nodes'])} nodes, {len(dump['edges'])} edges"
            )
            status = node.status()
            lines.append(f"  vector {status['vector_clock']['versions']}")
            for peer in status["peers"]:
                lines.append(f"  peer {peer}")
        except (httpx.HTTPError, AssertionError) as exc:
            lines.append(f"{node.name}: {exc!r}")
        if node.process is not None:
            lines.extend("  | " + line for line in node.process.text().splitlines()[-25:])
    return "\n".join(lines)


# --- random edits -------------------------------------------------------------------------------------------------


class Editor:
    """Random creates, updates and deletes through one member's graph API, as its users would make them; what it
    deleted is remembered (a deleted uid must never come back)."""

    def __init__(self, node: SyncNode, seed: int) -> None:
        self.node = node
        self.rng = random.Random(seed)
        self.nodes: list[tuple[int, str]] = []  # (id here, uid)
        self.edges: list[tuple[int, str]] = []
        self.deleted: set[str] = set()
        self.done = 0

    def refresh(self) -> None:
        self.nodes = [(n["id"], n["uid"]) for n in self.node.listing("nodes")]
        self.edges = [(e["id"], e["uid"]) for e in self.node.listing("edges")]

    def run(self, count: int) -> None:
        for i in range(count):
            if i % 6 == 0:
                self.refresh()
            self.step(i)

    def step(self, i: int) -> None:
        http, rng, name = self.node.graph(), self.rng, self.node.name
        roll = rng.random()
        if roll < 0.3 or len(self.nodes) < 2:
            props = {f"k{rng.randrange(4)}": rng.choice([1, "x", [1, 2], {"z": True}, 2.5])}
            answer = http.post(
                "/graph/nodes",
                json={
                    "session_id": SESSION,
                    "node_type": "entity",
                    "label": f"{name}{i}",
                    "properties": props,
                },
            )
            self._check(answer, "create node")
            if answer.status_code == 201:
                self.nodes.append((answer.json()["id"], answer.json()["uid"]))
        elif roll < 0.55:
            node_id, _ = rng.choice(self.nodes)
            change: dict[str, Any] = (
                {"label": f"{name}-relabel-{i}"}
                if rng.random() < 0.4
                else {"properties": {f"k{rng.randrange(4)}": rng.choice([None, 7, "y", [3]])}}
            )
            self._check(http.patch(f"/graph/nodes/{node_id}", json=change), "update node")
        elif roll < 0.67:
            node_id, uid = self.nodes.pop(rng.randrange(len(self.nodes)))
            answer = http.delete(f"/graph/nodes/{node_id}")
            if self._check(answer, "delete node"):
                self.deleted.add(uid)
        elif roll < 0.85:
            (source, _), (target, _) = rng.sample(self.nodes, 2)
            answer = http.post(
                "/graph/edges",
                json={
                    "session_id": SESSION,
                    "source_id": source,
                    "target_id": target,
                    "edge_type": rng.choice(["RELATES_TO", "PART_OF"]),
                    "weight": rng.choice([0.5, 1.0]),
                },
            )
            if self._check(answer, "create edge"):
                self.edges.append((answer.json()["id"], answer.json()["uid"]))
        elif self.edges and roll < 0.93:
            edge_id, _ = rng.choice(self.edges)
            self._check(
                http.patch(f"/graph/edges/{edge_id}", json={"weight": rng.choice([0.1, 0.9])}), "update"
            )
        elif self.edges:
            edge_id, uid = self.edges.pop(rng.randrange(len(self.edges)))
            if self._check(http.delete(f"/graph/edges/{edge_id}"), "delete edge"):
                self.deleted.add(uid)
        self.done += 1

    @staticmethod
    def _check(answer: httpx.Response, what: str) -> bool:
        """True when it was done; a 404 is what a user meets when another member's delete arrived first."""
        if answer.status_code == 404:
            return False
        assert answer.status_code in (200, 201), f"{what}: {answer.status_code} {answer.text}"
        return True


def edit_everywhere(nodes: list[SyncNode], count: int, seed: int) -> list[Editor]:
    editors = [Editor(node, seed * 10 + i) for i, node in enumerate(nodes)]
    with ThreadPoolExecutor(len(editors)) as pool:
        for future in [pool.submit(editor.run, count) for editor in editors]:
            future.result()
    return editors


def assert_nothing_resurrected(dump: dict[str, Any], editors: list[Editor]) -> None:
    deleted = set().union(*(e.deleted for e in editors))
    assert not deleted & set(dump["nodes"]), "a deleted node came back"
    assert not deleted & set(dump["edges"]), "a deleted edge came back"


# --- scenarios ----------------------------------------------------------------------------------------------------


def test_random_concurrent_edits_on_all_three_converge(mesh: Cluster[SyncNode]) -> None:
    seed = random.randrange(1_000_000)
    print(f"seed {seed}")
    editors = edit_everywhere(list(mesh.values()), 60, seed)
    dump = converged(mesh)
    assert_nothing_resurrected(dump, editors)
    assert dump["nodes"], "nothing was created"
    created_somewhere = {uid for e in editors for _, uid in e.nodes}
    assert created_somewhere <= set(dump["nodes"]) | set().union(*(e.deleted for e in editors))
    origins = set(mesh["a"].vector())
    assert origins == {n.instance_id for n in mesh.values()}  # every member's own writes went everywhere


def test_a_member_stopped_for_ten_intervals_catches_up_completely(mesh: Cluster[SyncNode]) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    seed = random.randrange(1_000_000)
    print(f"seed {seed}")
    edit_everywhere([a, b, c], 10, seed)
    before = converged(mesh)
    c.stop()
    down_since = time.monotonic()
    editors = [Editor(a, seed + 1), Editor(b, seed + 2)]
    while time.monotonic() - down_since < 10 * INTERVAL + 1:
        with ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(editor.run, 6) for editor in editors]:
                future.result()
    states = a.peer_states()[c.instance_id]
    assert states["state"] != "ok", states  # it was noticed
    c.start()
    dump = converged(mesh)
    assert dump != before
    assert_nothing_resurrected(dump, editors)
    assert set(before["nodes"]) - set(dump["nodes"]) <= set().union(*(e.deleted for e in editors))
    wait_until(lambda: all_ok(mesh), what="every peer state back to ok")


def test_kill_9_while_a_member_applies_then_it_converges(mesh: Cluster[SyncNode]) -> None:
    a, c = mesh["a"], mesh["c"]
    converged(mesh)
    c.stop()
    target = a.vector()[a.instance_id] + 600
    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(_create_many, a, 100, f"bulk{t}-") for t in range(6)]:
            future.result()
    assert a.vector()[a.instance_id] == target
    had = a.vector()[a.instance_id] - 600
    c.start()
    held = wait_until(lambda: _partly(c, a.instance_id, had, target), timeout=30, every=0.01, what="a page")
    c.stop(signal.SIGKILL)  # in the middle of its catch-up: later pages not yet (or being) applied
    assert had < held < target, (had, held, target)
    c.start()
    dump = converged(mesh)
    assert sum(1 for label in (v[1] for v in dump["nodes"].values()) if label.startswith("bulk")) == 600


def _create_many(node: SyncNode, count: int, prefix: str) -> None:
    for i in range(count):
        answer = node.graph().post(
            "/graph/nodes",
            json={
                "session_id": SESSION,
                "node_type": "fact",
                "label": f"{prefix}{i}",
                "properties": {"i": i},
            },
        )
        assert answer.status_code == 201, answer.text


def _partly(node: SyncNode, origin: str, had: int, target: int) -> int | None:
    held = node.vector().get(origin, 0)
    return held if had < held < target else None


def test_concurrent_updates_of_one_field_agree_and_of_different_fields_keep_both(
    mesh: Cluster[SyncNode],
) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    for attempt in range(5):  # a pull landing between the two writes makes them sequential: try again
        uid = _shared_node(mesh, f"contested-{attempt}")
        here, there = _local_id(a, uid), _local_id(b, uid)
        _at_once(
            functools.partial(a.graph().patch, f"/graph/nodes/{here}", json={"label": "from-a"}),
            functools.partial(b.graph().patch, f"/graph/nodes/{there}", json={"label": "from-b"}),
        )
        dump = converged(mesh)
        label = dump["nodes"][uid][1]
        assert label in ("from-a", "from-b")
        found = {node.name: [x for x in node.conflicts() if x["entity_id"] == uid] for node in (a, b, c)}
        if all(found.values()):
            break
    else:
        raise AssertionError("five pairs of simultaneous writes never met as concurrent ones")
    for name, entries in found.items():
        (entry,) = entries  # once per member
        assert entry["field"] == "label", (name, entry)
        winner = entry["local_version"] if entry["resolution"] == "KeepLocal" else entry["remote_version"]
        assert winner == label, (name, entry)
    assert len({entries[0]["winner_stamp"] for entries in found.values()}) == 1  # the same winner everywhere

    uid = _shared_node(mesh, "two-fields")
    ids = {node.name: _local_id(node, uid) for node in (a, b)}
    _at_once(
        lambda: a.graph().patch(f"/graph/nodes/{ids['a']}", json={"properties": {"left": "a"}}),
        lambda: b.graph().patch(f"/graph/nodes/{ids['b']}", json={"properties": {"right": "b"}}),
    )
    dump = converged(mesh)
    assert dump["nodes"][uid][2] == {"left": "a", "right": "b", "seed": 1}


def _shared_node(mesh: Cluster[SyncNode], label: str) -> str:
    created = (
        mesh["c"]
        .graph()
        .post(
            "/graph/nodes",
            json={"session_id": SESSION, "node_type": "concept", "label": label, "properties": {"seed": 1}},
        )
    )
    assert created.status_code == 201, created.text
    uid = str(created.json()["uid"])
    wait_until(lambda: all(uid in n.dump()["nodes"] for n in mesh.values()), what=f"{label} everywhere")
    return uid


def _local_id(node: SyncNode, uid: str) -> int:
    return next(n["id"] for n in node.listing("nodes") if n["uid"] == uid)


def _at_once(*calls: Callable[[], httpx.Response]) -> None:
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> httpx.Response:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        for answer in pool.map(run, calls):
            assert answer.status_code == 200, answer.text


def test_a_wrong_pinned_fingerprint_is_untrusted_and_a_refused_token_is_refused(
    mesh: Cluster[SyncNode],
) -> None:
    a, b, c = mesh["a"], mesh["b"], mesh["c"]
    assert a.process is not None
    assert b.process is not None
    assert c.process is not None
    impostor = {  # b's address, registered with c's fingerprint: the certificate there is not the pinned one
        "instance_id": "impostor",
        "hostname": "127.0.0.1",
        "port": b.process.port,
        "capabilities": [],
        "agent_profiles": [],
        "base_url": b.process.url,
        "fingerprint": c.process.fingerprint,
    }
    stranger = {  # the registry itself under another id: it accepts no peer token, not even its own
        **impostor,
        "instance_id": "stranger",
        "port": a.process.port,
        "base_url": a.process.url,
        "fingerprint": a.process.fingerprint,
    }
    http = a.admin()
    for fake in (impostor, stranger):
        assert http.post("/registry/register", json=fake).status_code == 200
    beating = threading.Event()

    def heartbeat() -> None:  # keeps both live in the registry's view
        with a.process.client(a.token) as own:  # type: ignore[union-attr]
            while not beating.wait(0.5):
                for fake in ("impostor", "stranger"):
                    own.post(f"/registry/heartbeat/{fake}", json={})

    thread = threading.Thread(target=heartbeat, daemon=True)
    thread.start()
    try:

        def seen() -> dict[str, dict[str, Any]] | None:
            states = a.peer_states()
            wanted = states.get("impostor", {}).get("state"), states.get("stranger", {}).get("state")
            return states if wanted == ("untrusted", "refused") else None

        states = wait_until(seen, timeout=20, what="the impostor untrusted and the stranger refused")
        assert c.process.fingerprint in states["impostor"]["last_error"]  # the pin it does not match
        assert b.process.fingerprint in states["impostor"]["last_error"]  # what it presents instead
        assert "peer token" in states["stranger"]["last_error"]
        assert states[b.instance_id]["state"] == states[c.instance_id]["state"] == "ok"  # others unaffected
        shown = run_cli(
            a.home,
            *("sync", "status", SESSION, "--json", "--server", a.process.url),
            *("--fingerprint", a.process.fingerprint),
            SPECAI_TOKEN=a.token,
        )
        assert shown.returncode == 0, shown.stderr
        peers = {p["instance_id"]: p for p in json.loads(shown.stdout)["peers"]}
        assert peers["impostor"]["state"] == "untrusted"
        assert peers["stranger"]["state"] == "refused"
        edit_everywhere([a, b, c], 5, 7)  # the mesh keeps syncing meanwhile
        converged(mesh)
    finally:
        beating.set()
        thread.join(5)
        for fake_id in ("impostor", "stranger"):
            http.delete(f"/registry/deregister/{fake_id}")
