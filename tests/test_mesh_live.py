"""The mesh end to end: three real `specai server` processes on loopback, auth on all, joined over pinned TLS.

Each member logs in to the registry with its own `mesh`-role account; the test's own clients are admins."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from databases import ENGINES, fresh_database_url
from live import PASSWORD, Cluster, Node, ServerProcess, add_user, run_cli, wait_until

from helpers import assert_error

pytestmark = pytest.mark.live

LEADER_TIMEOUT = 2.0
CONFIG = """\
[auth]
enabled = true

[mesh]
username = "{mesh_user}"
password_source = "env:MESH_PASSWORD"
heartbeat_interval_secs = 1
leader_timeout_secs = {leader_timeout}
"""


@dataclass
class MeshNode(Node):
    """One instance, logged in as its admin `root`, that reads the registry's view of the mesh."""

    def view(self) -> dict[str, Any]:
        assert self.http is not None
        response = self.http.get("/registry/agents")
        assert response.status_code == 200, response.text
        return dict(response.json())

    def live(self) -> dict[str, str]:
        return {m["instance_id"]: m["status"] for m in self.view()["instances"]}


def make_node(
    root: Path,
    name: str,
    database_url: str | None = None,
    mesh_users: tuple[str, ...] = (),
    mesh_extra: str = "",
) -> MeshNode:
    """A home with admin `root` (the test's client), the given `mesh`-role accounts, logging in to its registry
    as `mesh-<name>`."""
    home = root / name
    home.mkdir(mode=0o700)
    add_user(home, "root", role="admin")
    for user in mesh_users:
        add_user(home, user, role="mesh")
    database = f'\n[database]\nurl = "{database_url}"\n' if database_url else ""
    config = CONFIG.format(mesh_user=f"mesh-{name}", leader_timeout=LEADER_TIMEOUT)
    (home / "spec-ai.config.toml").write_text(config + mesh_extra + database)
    return MeshNode(name, home, env={"MESH_PASSWORD": PASSWORD})


def start_members(root: Path, nodes: Cluster[MeshNode], names: tuple[str, ...]) -> None:
    """Start members that join `nodes["registry"]` (pinned to its fingerprint), adding each to `nodes` as it runs."""
    registry = nodes["registry"].process
    assert registry is not None
    for name in names:
        node = make_node(root, name)
        node.args = ("--join", registry.url, "--join-fingerprint", registry.fingerprint)
        nodes.start(node)


@pytest.fixture(scope="module", params=ENGINES)
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster[MeshNode]]:
    """A registry (its store on each engine in turn) and two members that joined it with --join."""
    root = tmp_path_factory.mktemp(f"mesh-{request.param}")
    url = fresh_database_url(request)
    with Cluster[MeshNode]() as nodes:
        nodes.start(make_node(root, "registry", url, mesh_users=("mesh-a", "mesh-b", "mesh-intruder")))
        start_members(root, nodes, ("a", "b"))
        yield nodes


def everyone_agrees(nodes: list[MeshNode], leader: str, members: set[str]) -> bool:
    views = [node.view() for node in nodes]
    return all(
        view["leader_id"] == leader
        and {m["instance_id"] for m in view["instances"] if m["status"] == "live"} == members
        for view in views
    )


def test_members_join_and_every_instance_reports_the_registry_as_leader(mesh: Cluster[MeshNode]) -> None:
    registry, a, b = mesh["registry"], mesh["a"], mesh["b"]
    ids = {registry.instance_id, a.instance_id, b.instance_id}
    assert len(ids) == 3
    wait_until(lambda: everyone_agrees([registry, a, b], registry.instance_id, ids), what="a mesh of three")
    listed = registry.view()
    assert listed["self_id"] == registry.instance_id
    entries = {m["instance_id"]: m for m in listed["instances"]}
    assert entries[registry.instance_id]["is_leader"] is True
    assert "registry" in entries[registry.instance_id]["capabilities"]
    assert entries[a.instance_id]["base_url"] == a.process.url if a.process else False
    assert entries[a.instance_id]["fingerprint"] == (a.process.fingerprint if a.process else None)
    assert a.process is not None
    assert "joined the mesh at" in a.process.text()
    assert registry.process is not None
    shown = run_cli(
        a.home,
        "mesh",
        "members",
        "--json",
        "--server",
        registry.process.url,
        "--fingerprint",
        registry.process.fingerprint,
        SPECAI_TOKEN=registry.token,
    )
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["leader_id"] == registry.instance_id
    assert {m["instance_id"] for m in body["instances"]} == ids


def test_each_member_account_acts_only_for_its_own_instance(mesh: Cluster[MeshNode]) -> None:
    registry, a, b = mesh["registry"], mesh["a"], mesh["b"]
    assert registry.process is not None
    with registry.process.client() as anonymous:
        login = anonymous.post("/auth/token", json={"username": "mesh-b", "password": PASSWORD})
    assert login.status_code == 200, login.text
    with registry.process.client(login.json()["token"]) as as_b:
        assert as_b.post(f"/registry/heartbeat/{b.instance_id}", json={}).status_code == 200
        assert_error(as_b.post(f"/registry/heartbeat/{a.instance_id}", json={}), 403, "forbidden")
        assert_error(as_b.get(f"/messages/{a.instance_id}"), 403, "forbidden")
        assert_error(as_b.delete(f"/registry/deregister/{a.instance_id}"), 403, "forbidden")
        assert as_b.get(f"/messages/{b.instance_id}").status_code == 200
    assert a.instance_id in registry.live()


def test_broadcast_reaches_both_members_and_acks_are_per_recipient(mesh: Cluster[MeshNode]) -> None:
    registry, a, b = mesh["registry"], mesh["a"], mesh["b"]
    http = registry.http
    assert http is not None
    sent = http.post(
        f"/messages/send/{registry.instance_id}",
        json={"message_type": "notification", "payload": {"hello": "mesh"}},
    )
    assert sent.status_code == 200, sent.text
    body = sent.json()
    assert body["status"] == "queued"
    assert sorted(body["delivered_to"]) == sorted([a.instance_id, b.instance_id])

    def inbox(node: MeshNode) -> list[str]:
        found = http.get(f"/messages/{node.instance_id}")
        assert found.status_code == 200, found.text
        return [m["message_id"] for m in found.json()["messages"]]

    assert body["message_id"] in inbox(a)
    assert body["message_id"] in inbox(b)
    assert body["message_id"] not in inbox(registry)  # not its sender
    message = http.get(f"/messages/{a.instance_id}").json()["messages"][-1]
    assert message["message_type"] == "Notification"
    assert message["target_instance"] is None
    acked = http.post(f"/messages/ack/{a.instance_id}", json={"message_ids": [body["message_id"]]})
    assert acked.status_code == 204
    assert body["message_id"] not in inbox(a)
    assert body["message_id"] in inbox(b)


def test_a_send_to_an_unknown_target_is_refused_and_stores_nothing(mesh: Cluster[MeshNode]) -> None:
    registry, a, b = mesh["registry"], mesh["a"], mesh["b"]
    http = registry.http
    assert http is not None
    before = {
        n.instance_id: http.get(f"/messages/{n.instance_id}").json()["messages"] for n in (registry, a, b)
    }
    refused = http.post(
        f"/messages/send/{a.instance_id}",
        json={"message_type": "Query", "payload": {}, "target_instance": "nobody-here"},
    )
    assert_error(refused, 404, "unknown_instance")
    stranger = http.post("/messages/send/stranger", json={"message_type": "Query", "payload": {}})
    assert_error(stranger, 404, "unknown_instance")
    impostor = {
        "instance_id": registry.instance_id,
        "hostname": "evil",
        "port": 1,
        "capabilities": [],
        "agent_profiles": [],
    }
    assert_error(http.post("/registry/register", json=impostor), 409, "conflict")
    assert_error(http.delete(f"/registry/deregister/{registry.instance_id}"), 409, "conflict")
    too_big = http.post(
        f"/messages/send/{a.instance_id}",
        json={"message_type": "Query", "payload": "x" * 70_000, "target_instance": b.instance_id},
    )
    assert_error(too_big, 413, "payload_too_large")
    after = {
        n.instance_id: http.get(f"/messages/{n.instance_id}").json()["messages"] for n in (registry, a, b)
    }
    assert after == before


def test_an_evicted_member_registers_again_by_itself(mesh: Cluster[MeshNode]) -> None:
    registry, a = mesh["registry"], mesh["a"]
    assert registry.http is not None
    assert registry.http.delete(f"/registry/deregister/{a.instance_id}").status_code == 204
    assert_error(registry.http.post(f"/registry/heartbeat/{a.instance_id}", json={}), 404, "unknown_instance")
    wait_until(lambda: registry.live().get(a.instance_id) == "live", what="member a to re-register")


def test_a_registry_restart_keeps_members_and_messages(mesh: Cluster[MeshNode]) -> None:
    registry, a, b = mesh["registry"], mesh["a"], mesh["b"]
    assert registry.http is not None
    sent = registry.http.post(
        f"/messages/send/{a.instance_id}",
        json={"message_type": "TaskDelegation", "payload": {"task": 1}, "target_instance": b.instance_id},
    ).json()
    registry.stop()
    registry.start()
    ids = {registry.instance_id, a.instance_id, b.instance_id}
    assert set(registry.live()) == ids  # persisted, even before anyone heartbeats again
    assert registry.http is not None
    waiting = registry.http.get(f"/messages/{b.instance_id}").json()["messages"]
    assert sent["message_id"] in [m["message_id"] for m in waiting]
    wait_until(
        lambda: everyone_agrees([registry, a, b], registry.instance_id, ids), what="heartbeats to resume"
    )


def test_a_stale_leader_is_replaced_the_same_way_everywhere(mesh: Cluster[MeshNode]) -> None:
    registry, a, b = mesh["registry"], mesh["a"], mesh["b"]
    assert registry.process is not None
    assert registry.process.proc is not None
    members = {a.instance_id, b.instance_id}
    everyone = {registry.instance_id, *members}
    # first a settled mesh: the members have heard each other (so each holds a peer token for the other) and
    # hold the registry's ranks (an earlier test made a member register anew, which gave it a later rank)
    wait_until(
        lambda: (
            everyone_agrees([registry, a, b], registry.instance_id, everyone)
            and ranks(a) == ranks(b) == ranks(registry)
        ),
        what="a mesh of three with the registry's ranks",
    )
    successor = min((a, b), key=lambda n: (created(registry, n.instance_id), n.instance_id)).instance_id
    os.kill(registry.process.proc.pid, signal.SIGSTOP)  # alive but silent: it goes stale
    try:
        wait_until(  # a hung registry is noticed when heartbeats to it time out: slower than a dead one
            lambda: everyone_agrees([a, b], successor, members),
            timeout=30,
            what="a new leader while the registry hangs",
        )
    finally:
        os.kill(registry.process.proc.pid, signal.SIGCONT)
    wait_until(
        lambda: everyone_agrees([registry, a, b], registry.instance_id, everyone), what="the registry back"
    )
    registry.stop(signal.SIGKILL)  # killed: the same successor, deterministically
    wait_until(lambda: everyone_agrees([a, b], successor, members), what="a new leader after kill -9")


def test_a_member_that_stops_deregisters(mesh: Cluster[MeshNode]) -> None:
    a, b = mesh["a"], mesh["b"]
    b.stop()
    wait_until(lambda: b.instance_id not in a.live(), timeout=5, what="b to leave a's view")


def test_a_wrong_join_fingerprint_refuses_to_join(mesh: Cluster[MeshNode], tmp_path: Path) -> None:
    target = mesh["a"]  # any live instance will do as the registry here
    assert target.process is not None
    node = make_node(tmp_path, "intruder")
    wrong = "AA:" * 31 + "AA"
    proc = ServerProcess(
        node.home, "--join", target.process.url, "--join-fingerprint", wrong, environ=node.env
    )
    with contextlib.suppress(RuntimeError):
        proc.start()  # it may exit before printing its listening line, or right after
    assert proc.proc is not None
    code = proc.wait_exit(15)
    output = proc.text()
    assert code == 5, output
    assert "cannot join the mesh" in output
    assert target.process.fingerprint in output
    assert wrong in output
    assert node.home.joinpath("instance_id").read_text().strip() not in target.live()


def ranks(node: MeshNode) -> dict[str, str]:
    """Each member's registration time (its rank) as `node` sees it."""
    return {m["instance_id"]: m["created_at"] for m in node.view()["instances"]}


def created(node: MeshNode, instance_id: str) -> str:
    return next(m["created_at"] for m in node.view()["instances"] if m["instance_id"] == instance_id)
