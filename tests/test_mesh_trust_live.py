"""The mesh attacks of issue 9 against real server processes: a rogue mesh account registers a RECORDING TLS
listener as a member, and 40 fake members pointing at a silent port. The registry's store runs on each engine."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import jwt
import pytest
from databases import ENGINES, fresh_database_url
from live import PASSWORD, Cluster, RecordingTlsServer, wait_until
from test_mesh_live import LEADER_TIMEOUT, MeshNode, make_node, start_members

from helpers import assert_error
from specai.client.peer import Credentials, Peer
from specai.config import MeshSettings, Settings
from specai.errors import TrustError
from specai.identity.trust import KnownServers, parse_server
from specai.mesh.registry import Member, MemberInfo, MeshRegistry
from specai.server.mesh_link import MeshLink

pytestmark = pytest.mark.live

FAKES = 40


class SilentPort:
    """A port that accepts TCP connections and then never says anything (not even a TLS handshake)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.held: list[socket.socket] = []
        self.lock = threading.Lock()
        self.stopped = False
        threading.Thread(target=self._hold, daemon=True).start()

    def _hold(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.held.append(conn)
                if self.stopped:
                    conn.close()

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.sock.close()
            for conn in self.held:
                conn.close()


@pytest.fixture(scope="module", params=ENGINES)
def mesh(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster[MeshNode]]:
    """A registry with mesh accounts for a, b and a rogue; members a and b joined with --join."""
    root = tmp_path_factory.mktemp(f"mesh-trust-{request.param}")
    url = fresh_database_url(request)
    with Cluster[MeshNode]() as nodes:
        registry = make_node(
            root,
            "registry",
            url,
            mesh_users=("mesh-a", "mesh-b", "rogue"),
            mesh_extra="max_members_per_account = 64\n",
        )
        nodes.start(registry)
        start_members(root, nodes, ("a", "b"))
        ids = {n.instance_id for n in nodes.values()}
        wait_until(
            lambda: all(set(n.live().values()) == {"live"} and set(n.live()) == ids for n in nodes.values()),
            what="a mesh of three",
        )
        yield nodes


def rogue(registry: MeshNode) -> httpx.Client:
    assert registry.process is not None
    with registry.process.client() as anonymous:
        login = anonymous.post("/auth/token", json={"username": "rogue", "password": PASSWORD})
    assert login.status_code == 200, login.text
    return registry.process.client(login.json()["token"])


def register(http: httpx.Client, instance_id: str, port: int, fingerprint: str) -> None:
    body = {
        "instance_id": instance_id,
        "hostname": "127.0.0.1",
        "port": port,
        "capabilities": ["query"],
        "agent_profiles": [],
        "base_url": f"https://127.0.0.1:{port}",
        "fingerprint": fingerprint,
        "registered_at": "2000-01-01T00:00:00+00:00",  # and it would like to lead, too
    }
    response = http.post("/registry/register", json=body)
    assert response.status_code == 200, response.text


def secret_forms(secret: str) -> list[bytes]:
    """The password as it could travel: plain, JSON-escaped, URL-encoded, in HTTP Basic."""
    return [
        secret.encode(),
        json.dumps(secret).encode(),
        quote(secret).encode(),
        base64.b64encode(f"mesh-a:{secret}".encode()),
        base64.b64encode(f"mesh-b:{secret}".encode()),
        base64.b64encode(secret.encode()),
    ]


def test_a_listener_registered_by_a_rogue_never_receives_the_mesh_password(
    mesh: Cluster[MeshNode], tmp_path: Path
) -> None:
    registry, a, b = mesh["registry"], mesh["a"], mesh["b"]
    listener = RecordingTlsServer(tmp_path)
    try:
        with rogue(registry) as http:
            register(http, "rogue-listener", listener.port, listener.fingerprint)
            assert registry.view()["leader_id"] == registry.instance_id  # the old timestamp bought nothing
            # members contact it (with what?) on every heartbeat; wait for both, and a few rounds of 401s
            wait_until(lambda: len(listener.requests) >= 6, what="members to contact the listener")
            time.sleep(2 * LEADER_TIMEOUT)
    finally:
        listener.close()
    raw = bytes(listener.raw)
    lines = [r.request_line for r in listener.requests]
    assert not any("/auth/" in line for line in lines), lines
    for form in secret_forms(PASSWORD):
        assert form not in raw, form
    assert b"password" not in raw.lower()
    audiences = set()
    for request in listener.requests:
        assert request.request_line.split()[1].startswith("/registry/"), request.request_line
        scheme, _, token = request.headers["authorization"].partition(" ")
        claims = jwt.decode(token, options={"verify_signature": False})
        assert scheme == "Bearer"
        assert claims["typ"] == "mesh-peer"
        assert claims["aud"] == "rogue-listener"
        assert claims["iss"] == registry.instance_id
        assert 0 < claims["exp"] - time.time() <= 120
        audiences.add(claims["sub"])
    assert audiences == {a.instance_id, b.instance_id}  # each member, with a token naming itself


def test_forty_fake_members_at_a_silent_port_do_not_make_a_real_member_stale(mesh: Cluster[MeshNode]) -> None:
    registry, a, b = mesh["registry"], mesh["a"], mesh["b"]
    silent = SilentPort()
    fakes = [f"fake-{n:02d}" for n in range(FAKES)]
    try:
        with rogue(registry) as http:
            for n, fake in enumerate(fakes):
                register(http, fake, silent.port, f"{n:02X}:" * 31 + "00")
            wait_until(
                lambda: set(fakes) <= set(a.live()) and set(fakes) <= set(b.live()), what="fakes learned"
            )
            deadline = time.monotonic() + 4 * LEADER_TIMEOUT + 4
            checks = 0
            while time.monotonic() < deadline:
                for fake in fakes[:5]:  # the rogue keeps its fakes fresh at the registry
                    http.post(f"/registry/heartbeat/{fake}", json={})
                views = {name: node.live() for name, node in (("registry", registry), ("a", a), ("b", b))}
                real = {registry.instance_id, a.instance_id, b.instance_id}
                for name, live in views.items():
                    stale = {i for i in real if live.get(i) != "live"}
                    assert not stale, f"{name} sees {stale} as not live while fakes hang: {live}"
                checks += 1
                time.sleep(0.25)
        assert checks > 10  # the views were sampled all through the window (fewer rounds on a loaded machine)
        assert silent.accepted >= FAKES  # the fakes really were tried, and hung
    finally:
        silent.stop()
        with rogue(registry) as http:
            for fake in fakes:
                http.delete(f"/registry/deregister/{fake}")


def test_a_rogue_cannot_touch_a_members_entry_over_the_wire(mesh: Cluster[MeshNode]) -> None:
    registry, a = mesh["registry"], mesh["a"]
    before = next(m for m in registry.view()["instances"] if m["instance_id"] == a.instance_id)
    with rogue(registry) as http:
        body = {
            "instance_id": a.instance_id,
            "hostname": "evil",
            "port": 6666,
            "capabilities": [],
            "agent_profiles": [],
            "base_url": "https://127.0.0.1:6666",
        }
        assert_error(http.post("/registry/register", json=body), 403, "forbidden")
        assert_error(http.post(f"/registry/heartbeat/{a.instance_id}", json={}), 403, "forbidden")
        assert_error(http.get(f"/messages/{registry.instance_id}"), 403, "forbidden")
        send = {"message_type": "Query", "payload": "hi", "target_instance": registry.instance_id}
        assert_error(http.post(f"/messages/send/{a.instance_id}", json=send), 403, "forbidden")
    after = next(m for m in registry.view()["instances"] if m["instance_id"] == a.instance_id)
    assert (after["base_url"], after["fingerprint"], after["created_at"]) == (
        before["base_url"],
        before["fingerprint"],
        before["created_at"],
    )


def test_the_password_goes_only_to_peers_an_operator_pinned(tmp_path: Path) -> None:
    listener = RecordingTlsServer(tmp_path)
    other = "AB:" * 31 + "AB"
    try:
        settings = Settings(
            home=tmp_path, mesh=MeshSettings(trusted_fingerprints=(listener.fingerprint.lower(),))
        )
        link = MeshLink(
            settings,
            MeshRegistry(None, "me", 15),  # type: ignore[arg-type]  # the store is not needed to choose credentials
            MemberInfo("me", "127.0.0.1", 1),
            None,
            None,
            Credentials("mesh-a", PASSWORD),
        )
        now = datetime.now(UTC)

        def member(fingerprint: str) -> Member:
            url = f"https://127.0.0.1:{listener.port}"
            return Member("m", "127.0.0.1", listener.port, url, fingerprint, [], [], now, now, True)

        trusted, learned = link._member_peer(member(listener.fingerprint)), link._member_peer(member(other))
        assert trusted is not None
        assert trusted.credentials is not None
        assert trusted.tokens is None
        assert learned is not None
        assert learned.credentials is None
        assert learned.tokens is not None
        assert link._member_peer(member("not a fingerprint")) is None
        assert link._member_peer(dataclasses.replace(member(other), base_url="http://127.0.0.1:80")) is None

        async def join(trusted: frozenset[str]) -> str:
            peer = Peer(parse_server(f"https://127.0.0.1:{listener.port}"), None, credentials=Credentials())
            try:
                return await peer.open(KnownServers(tmp_path), trusted)
            finally:
                await peer.aclose()

        assert asyncio.run(join(link.trusted)) == listener.fingerprint  # pinned by trusted_fingerprints
        with pytest.raises(TrustError):
            asyncio.run(join(frozenset()))  # neither --join-fingerprint, nor known_servers.json, nor trusted
    finally:
        listener.close()
    assert listener.requests == []  # opening a peer only fetches its certificate
