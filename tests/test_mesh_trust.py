"""A mesh that trusts only members, in-process on SQLite and PostgreSQL: roles, owned instance ids, ranks the
registry assigns, peer tokens, bounded inbox pages and quotas. Every attack of issue 9 is kept here as a test."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from databases import seed_users
from litestar.testing import TestClient
from sqlalchemy import insert

from helpers import assert_error
from specai import auth
from specai.config import AuthSettings, MeshSettings, Settings
from specai.identity.tls import ensure_server_cert, read_cert
from specai.mesh.peer_token import PeerTokenVerifier
from specai.server.app import create_app
from specai.store import Store
from specai.store.schema import mesh_members
from specai.store.types import utcnow
from specai.users import directory as users
from specai.users.access import Role

SECRET = "m" * 40
PASSWORD = "pw-one-two"
Headers = dict[str, str]


@dataclasses.dataclass
class Mesh:
    """An in-process registry with admin root, mesh accounts alice and bob (the rogue), and user carol."""

    client: TestClient
    settings: Settings
    tokens: dict[str, Headers]

    @property
    def self_id(self) -> str:
        return str(self.client.app.state.specai.instance_id)

    def register(self, who: str, instance_id: str, **fields: Any) -> Any:
        body = {
            "instance_id": instance_id,
            "hostname": "127.0.0.1",
            "port": 4000,
            "capabilities": ["query"],
            "agent_profiles": [],
            "base_url": "https://127.0.0.1:4000",
            "fingerprint": "AA:" * 31 + "AA",
            **fields,
        }
        return self.client.post("/registry/register", json=body, headers=self.tokens[who])

    def send(self, who: str, source: str, target: str | None, payload: Any = None) -> Any:
        body = {"message_type": "Notification", "payload": payload, "target_instance": target}
        return self.client.post(f"/messages/send/{source}", json=body, headers=self.tokens[who])


def build(db_settings: Settings, **mesh: Any) -> Iterator[Mesh]:
    path = db_settings.home / "credentials.json"
    made = {
        name: users.add_user(path, name, PASSWORD, role=cast(Role, role))
        for name, role in (("root", "admin"), ("alice", "mesh"), ("bob", "mesh"), ("carol", "user"))
    }
    settings = dataclasses.replace(
        db_settings,
        auth=AuthSettings(enabled=True, credentials_file=path, token_secret=SECRET),
        mesh=MeshSettings(**mesh),
    )
    tokens = {name: {"Authorization": "Bearer " + issue(user)} for name, user in made.items()}
    seed_users(settings)
    app = create_app(settings, cert=read_cert(ensure_server_cert(settings).cert))
    with TestClient(app) as client:
        yield Mesh(client, settings, tokens)


def issue(user: users.User) -> str:
    token, _ = auth.issue_token(SECRET, user.username, 600, user_id=user.id, generation=user.token_generation)
    return token


@pytest.fixture
def mesh(db_settings: Settings) -> Iterator[Mesh]:
    yield from build(db_settings, max_inbox_bytes=10_000, max_members_per_account=4, max_queued_messages=30)


def mesh_routes(instance_id: str) -> list[tuple[str, str, Any]]:
    """Every /registry/* and /messages/* route, aimed at `instance_id`."""
    return [
        (
            "POST",
            "/registry/register",
            {
                "instance_id": instance_id,
                "hostname": "h",
                "port": 1,
                "capabilities": [],
                "agent_profiles": [],
            },
        ),
        ("GET", "/registry/agents", None),
        ("POST", f"/registry/heartbeat/{instance_id}", {}),
        ("DELETE", f"/registry/deregister/{instance_id}", None),
        ("POST", "/registry/peer-token", {"source": instance_id, "audience": "other"}),
        ("POST", f"/messages/send/{instance_id}", {"message_type": "Query", "payload": 1}),
        ("GET", f"/messages/{instance_id}", None),
        ("POST", f"/messages/ack/{instance_id}", {"message_ids": ["x"]}),
    ]


# --- roles and owners ------------------------------------------------------------------------------------------


def test_a_user_account_gets_403_on_every_mesh_route(mesh: Mesh) -> None:
    assert mesh.register("alice", "a-1").status_code == 200
    for target in ("a-1", mesh.self_id):
        for method, path, body in mesh_routes(target):
            response = mesh.client.request(method, path, json=body, headers=mesh.tokens["carol"])
            assert_error(response, 403, "forbidden")
    assert mesh.client.get("/registry/agents", headers=mesh.tokens["alice"]).status_code == 200


def test_a_rogue_mesh_account_cannot_act_for_another_accounts_instance(mesh: Mesh) -> None:
    client, bob = mesh.client, mesh.tokens["bob"]
    assert mesh.register("alice", "a-1").status_code == 200
    assert mesh.register("alice", "a-2").status_code == 200
    sent = mesh.send("alice", "a-1", "a-2", {"secret": 1})
    assert sent.status_code == 200, sent.text
    before = client.get("/registry/agents", headers=mesh.tokens["alice"]).json()["instances"]

    evil = mesh.register("bob", "a-1", base_url="https://127.0.0.1:6666", fingerprint="BB:" * 31 + "BB")
    assert_error(evil, 403, "forbidden")
    assert_error(client.post("/registry/heartbeat/a-1", json={}, headers=bob), 403, "forbidden")
    assert_error(client.delete("/registry/deregister/a-1", headers=bob), 403, "forbidden")
    assert_error(mesh.send("bob", "a-1", "a-2", "as alice"), 403, "forbidden")
    assert_error(client.get("/messages/a-2", headers=bob), 403, "forbidden")
    assert_error(
        client.post("/messages/ack/a-2", json={"message_ids": [sent.json()["message_id"]]}, headers=bob),
        403,
        "forbidden",
    )
    peer = client.post("/registry/peer-token", json={"source": "a-1", "audience": "a-2"}, headers=bob)
    assert_error(peer, 403, "forbidden")
    for rogue in ("alice", "bob"):  # the registry's own inbox and identity belong to the server
        assert_error(client.get(f"/messages/{mesh.self_id}", headers=mesh.tokens[rogue]), 403, "forbidden")
        assert_error(mesh.send(rogue, mesh.self_id, "a-1"), 403, "forbidden")
        assert_error(mesh.register(rogue, mesh.self_id), 409, "conflict")

    after = client.get("/registry/agents", headers=mesh.tokens["alice"]).json()["instances"]
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("last_heartbeat", "status")} for r in rows]  # noqa: E731
    assert strip(after) == strip(before)  # base_url, fingerprint and rank unchanged
    inbox = client.get("/messages/a-2", headers=mesh.tokens["alice"]).json()
    assert [m["payload"] for m in inbox["messages"]] == [{"secret": 1}]  # nothing sent as a-1 by bob
    assert (
        client.get(f"/messages/{mesh.self_id}", headers=mesh.tokens["root"]).status_code == 200
    )  # admin may
    assert client.post("/registry/heartbeat/a-1", json={}, headers=mesh.tokens["alice"]).status_code == 200
    assert client.delete("/registry/deregister/a-1", headers=mesh.tokens["alice"]).status_code == 204


def test_the_owner_may_move_its_member_and_keeps_its_rank(mesh: Mesh) -> None:
    first = mesh.register("alice", "a-1").json()
    rank = next(p["created_at"] for p in first["peers"] if p["instance_id"] == "a-1")
    moved = mesh.register(
        "alice", "a-1", base_url="https://127.0.0.1:4100", fingerprint="CC:" * 31 + "CC"
    ).json()
    entry = next(p for p in moved["peers"] if p["instance_id"] == "a-1")
    assert entry["base_url"] == "https://127.0.0.1:4100"
    assert entry["created_at"] == rank


def test_leadership_cannot_be_claimed_with_an_old_timestamp(mesh: Mesh) -> None:
    answer = mesh.register("bob", "b-old", registered_at="2000-01-01T00:00:00+00:00")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["leader_id"] == mesh.self_id
    assert body["is_leader"] is False
    entry = next(p for p in body["peers"] if p["instance_id"] == "b-old")
    assert entry["created_at"] > "2020"  # the registry stamped it itself
    heartbeat = mesh.client.post("/registry/heartbeat/b-old", json={}, headers=mesh.tokens["bob"]).json()
    assert heartbeat["leader_id"] == mesh.self_id


def test_a_member_registered_before_owners_existed_is_claimed_by_its_next_registration(mesh: Mesh) -> None:
    now = utcnow()

    async def legacy() -> None:
        store = await Store.open(mesh.settings)
        async with store.transaction() as conn:
            await conn.execute(
                insert(mesh_members).values(
                    instance_id="old-1",
                    hostname="h",
                    port=1,
                    base_url="https://h:1",
                    fingerprint=None,
                    capabilities=[],
                    agent_profiles=[],
                    registered_at=now,
                    last_heartbeat=now,
                    owner_id=None,
                )
            )
        await store.close()

    asyncio.run(legacy())
    body = assert_error(
        mesh.client.post("/registry/heartbeat/old-1", json={}, headers=mesh.tokens["alice"]),
        404,
        "unknown_instance",
    )
    assert "register" in body["details"]["hint"]
    assert mesh.register("alice", "old-1").status_code == 200  # claimed
    assert_error(mesh.register("bob", "old-1"), 403, "forbidden")
    assert (
        mesh.client.post("/registry/heartbeat/old-1", json={}, headers=mesh.tokens["alice"]).status_code
        == 200
    )


# --- quotas and bounded reads ----------------------------------------------------------------------------------


def test_members_per_account_are_limited(mesh: Mesh) -> None:
    for n in range(4):
        assert mesh.register("bob", f"fake-{n}").status_code == 200
    body = assert_error(mesh.register("bob", "fake-4"), 409, "quota_exceeded")
    assert "max_members_per_account" in body["error"]
    assert mesh.register("bob", "fake-0", port=4001).status_code == 200  # refreshing an own member is fine
    assert mesh.register("alice", "a-1").status_code == 200  # the quota is per account
    assert mesh.register("root", "admin-extra").status_code == 200
    assert mesh.client.delete("/registry/deregister/fake-0", headers=mesh.tokens["bob"]).status_code == 204
    assert mesh.register("bob", "fake-4").status_code == 200


def test_queued_messages_per_recipient_are_limited(mesh: Mesh) -> None:
    mesh.register("alice", "a-1")
    mesh.register("alice", "a-2")
    for n in range(30):
        assert mesh.send("alice", "a-1", "a-2", n).status_code == 200
    assert_error(mesh.send("alice", "a-1", "a-2", "one too many"), 409, "quota_exceeded")
    assert_error(mesh.send("alice", "a-1", None, "broadcast"), 409, "quota_exceeded")  # a-2 is full
    messages = read_all(mesh, "a-2")
    assert [m["payload"] for m in messages] == list(range(30))


def read_all(
    mesh: Mesh, instance_id: str, limit: int = 100, check: Callable[[dict[str, Any]], None] | None = None
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        page = mesh.client.get(f"/messages/{instance_id}", params=params, headers=mesh.tokens["alice"])
        assert page.status_code == 200, page.text
        body = page.json()
        if check:
            check(body)
        found += body["messages"]
        if not body["more"]:
            assert body["cursor"] is None
            return found
        params["after"] = body["cursor"]


def test_inbox_reads_page_by_count_and_by_bytes(mesh: Mesh) -> None:
    mesh.register("alice", "a-1")
    mesh.register("alice", "a-2")
    for n in range(12):
        assert mesh.send("alice", "a-1", "a-2", {"n": n, "blob": "x" * 3000}).status_code == 200
    first = mesh.client.get("/messages/a-2", headers=mesh.tokens["alice"]).json()
    assert len(first["messages"]) == 3
    assert first["more"] is True

    def bounded(body: dict[str, Any]) -> None:
        size = sum(len(json.dumps(m["payload"], separators=(",", ":")).encode()) for m in body["messages"])
        assert 1 <= len(body["messages"]) <= 2
        assert size <= 10_000

    messages = read_all(mesh, "a-2", limit=2, check=bounded)
    assert [m["payload"]["n"] for m in messages] == list(range(12))
    ids = [m["message_id"] for m in messages]
    ack = mesh.client.post("/messages/ack/a-2", json={"message_ids": ids[-3:]}, headers=mesh.tokens["alice"])
    assert ack.status_code == 204  # ids beyond the first page are acknowledged too
    assert [m["payload"]["n"] for m in read_all(mesh, "a-2")] == list(range(9))


def test_one_message_larger_than_a_page_is_still_delivered(db_settings: Settings) -> None:
    for mesh in build(db_settings, max_inbox_bytes=100, max_payload_bytes=5000):
        mesh.register("alice", "a-1")
        mesh.register("alice", "a-2")
        mesh.send("alice", "a-1", "a-2", "y" * 4000)
        mesh.send("alice", "a-1", "a-2", "z")
        pages = [mesh.client.get("/messages/a-2", headers=mesh.tokens["alice"]).json()]
        assert len(pages[0]["messages"]) == 1
        assert pages[0]["more"] is True
        assert [m["payload"] for m in read_all(mesh, "a-2")] == ["y" * 4000, "z"]


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=1001", "limit=x", "after=1%C2%B2", "after=-1", "after=%00"]
)
def test_bad_inbox_parameters_are_400(mesh: Mesh, query: str) -> None:
    mesh.register("alice", "a-1")
    assert_error(
        mesh.client.get(f"/messages/a-1?{query}", headers=mesh.tokens["alice"]), 400, "invalid_request"
    )


def test_ack_lists_and_fields_are_bounded(mesh: Mesh) -> None:
    mesh.register("alice", "a-1")
    alice = mesh.tokens["alice"]
    many = {"message_ids": [f"id-{n}" for n in range(1001)]}
    assert_error(mesh.client.post("/messages/ack/a-1", json=many, headers=alice), 400, "invalid_request")
    assert (
        mesh.client.post(
            "/messages/ack/a-1", json={"message_ids": many["message_ids"][:1000]}, headers=alice
        ).status_code
        == 204
    )
    for field in ("hostname", "base_url", "fingerprint"):
        value = "https://h\x00:1" if field == "base_url" else "h\x00"
        assert_error(mesh.register("alice", "a-2", **{field: value}), 400, "invalid_request")
    assert_error(mesh.register("alice", "a-2", base_url="http://127.0.0.1:80"), 400, "invalid_request")
    nul = {"message_type": "Query", "payload": 1, "target_instance": "a-1", "correlation_id": "c\x00"}
    assert_error(mesh.client.post("/messages/send/a-1", json=nul, headers=alice), 400, "invalid_request")


# --- peer tokens -----------------------------------------------------------------------------------------------


def registry_der(mesh: Mesh) -> bytes:
    pem = ensure_server_cert(mesh.settings).cert.read_bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def test_the_registry_issues_peer_tokens_only_for_the_callers_own_member(mesh: Mesh) -> None:
    mesh.register("alice", "a-1")
    mesh.register("bob", "b-1")
    alice = mesh.tokens["alice"]
    answer = mesh.client.post(
        "/registry/peer-token", json={"source": "a-1", "audience": "b-1"}, headers=alice
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    claims = PeerTokenVerifier(registry_der(mesh), mesh.self_id, "b-1").verify(body["token"])
    assert (claims.sub, claims.aud, body["issuer"]) == ("a-1", "b-1", mesh.self_id)
    assert 60 <= body["expires_at"] - utcnow().timestamp() <= 120
    assert_error(
        mesh.client.post("/registry/peer-token", json={"source": "a-1", "audience": "ghost"}, headers=alice),
        404,
        "unknown_instance",
    )
    assert_error(
        mesh.client.post("/registry/peer-token", json={"source": "a-1", "audience": "a-1"}, headers=alice),
        400,
        "invalid_request",
    )
    # this registry joined no one: a peer token is no credential here
    peer = {"Authorization": f"Bearer {body['token']}"}
    assert_error(mesh.client.get("/registry/agents", headers=peer), 401, "unauthorized")


def test_a_member_accepts_a_peer_token_only_for_its_instance_and_only_on_mesh_routes(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.register("alice", "a-1")
    mesh.register("alice", "m-2")
    for member in build(Settings(home=tmp_path / "member")):  # another server, which joined `mesh`
        member_id = member.self_id
        mesh.register("alice", member_id)
        member.client.app.state.specai.trust_registry(registry_der(mesh), mesh.self_id)

        def token(source: str, audience: str) -> Headers:
            got = mesh.client.post(
                "/registry/peer-token",
                json={"source": source, "audience": audience},
                headers=mesh.tokens["alice"],
            )
            assert got.status_code == 200, got.text
            return {"Authorization": f"Bearer {got.json()['token']}"}

        as_a1 = token("a-1", member_id)
        register = {
            "instance_id": "a-1",
            "hostname": "h",
            "port": 1,
            "capabilities": [],
            "agent_profiles": [],
            "base_url": "https://h:1",
            "fingerprint": "AA:" * 31 + "AA",
        }
        assert member.client.post("/registry/register", json=register, headers=as_a1).status_code == 200
        assert member.client.post("/registry/heartbeat/a-1", json={}, headers=as_a1).status_code == 200
        as_other = {**register, "instance_id": "m-2"}
        assert_error(member.client.post("/registry/register", json=as_other, headers=as_a1), 403, "forbidden")
        assert_error(member.client.get(f"/messages/{member_id}", headers=as_a1), 403, "forbidden")
        assert_error(member.client.get("/agents", headers=as_a1), 401, "unauthorized")  # mesh routes only
        assert_error(
            member.client.post(
                "/registry/peer-token", json={"source": "a-1", "audience": member_id}, headers=as_a1
            ),
            403,
            "forbidden",
        )
        wrong_audience = token("a-1", "m-2")  # meant for another member
        assert_error(
            member.client.post("/registry/heartbeat/a-1", json={}, headers=wrong_audience),
            401,
            "unauthorized",
        )
        # a local mesh account of the member cannot take over a-1, which registered itself with its peer token
        assert_error(member.register("bob", "a-1", base_url="https://127.0.0.1:6666"), 403, "forbidden")


def test_a_default_page_of_64_kb_messages_stays_within_one_mib(db_settings: Settings) -> None:
    for mesh in build(db_settings):  # the defaults: 100 per page, 1 MiB of payloads, 64 KiB per payload
        mesh.register("alice", "a-1")
        mesh.register("alice", "a-2")
        blob = "x" * (65_536 - 2)  # a JSON string of exactly 64 KiB
        for _ in range(40):
            assert mesh.send("alice", "a-1", "a-2", blob).status_code == 200
        page = mesh.client.get("/messages/a-2", headers=mesh.tokens["alice"])
        body = page.json()
        assert len(body["messages"]) == 16
        assert body["more"] is True
        assert len(page.content) < 1_048_576 + 16 * 1024  # the payloads plus their envelopes
        assert len(read_all(mesh, "a-2")) == 40
