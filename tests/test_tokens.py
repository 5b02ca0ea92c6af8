"""Revocable, scoped tokens in-process on both engines: generations, logout, API keys, removed users, roles."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from databases import change_user, seed_users
from litestar.testing import TestClient

from helpers import assert_error
from specai.config import AuthSettings, Settings
from specai.identity.tls import ensure_server_cert, read_cert
from specai.server.app import create_app
from specai.users import directory as users

SECRET = "t" * 40
PASSWORD = "pw-one-two"


@pytest.fixture
def settings(db_settings: Settings) -> Settings:
    """Auth on, with admin root, users alice and bob, and mesh account relay, on each engine."""
    path = db_settings.home / "credentials.json"
    users.add_user(path, "root", PASSWORD)
    users.add_user(path, "alice", PASSWORD)
    users.add_user(path, "bob", PASSWORD)
    users.add_user(path, "relay", PASSWORD, role="mesh")
    settings = dataclasses.replace(
        db_settings, auth=AuthSettings(enabled=True, credentials_file=path, token_secret=SECRET)
    )
    seed_users(settings)
    return settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, cert=read_cert(ensure_server_cert(settings).cert))
    with TestClient(app) as test_client:
        yield test_client


def login(client: TestClient, name: str, password: str = PASSWORD) -> dict[str, str]:
    response = client.post("/auth/token", json={"username": name, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def make_key(client: TestClient, headers: dict[str, str], scope: str, **fields: object) -> dict[str, object]:
    response = client.post(
        "/auth/keys", json={"name": f"{scope} key", "scope": scope, **fields}, headers=headers
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def bearer(key: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_token_issued_before_passwd_is_401_right_after(client: TestClient, settings: Settings) -> None:
    headers = login(client, "alice")
    assert client.get("/agents", headers=headers).status_code == 200
    change_user(client, settings, "set_password", "alice", "a new one")
    body = assert_error(client.get("/agents", headers=headers), 401, "unauthorized")
    assert "revoked" in body["error"]
    assert client.get("/agents", headers=login(client, "alice", "a new one")).status_code == 200


def test_auth_revoke_and_set_role_end_every_earlier_token(client: TestClient, settings: Settings) -> None:
    first, second = login(client, "bob"), login(client, "bob")
    change_user(client, settings, "revoke_tokens", "bob")
    assert_error(client.get("/agents", headers=first), 401, "unauthorized")
    assert_error(client.get("/agents", headers=second), 401, "unauthorized")
    third = login(client, "bob")
    change_user(client, settings, "set_role", "bob", "mesh")
    assert_error(client.get("/agents", headers=third), 401, "unauthorized")


def test_logout_revokes_only_the_token_it_carries(client: TestClient) -> None:
    one, other = login(client, "alice"), login(client, "alice")
    assert client.post("/auth/logout", headers=one).status_code == 204
    assert_error(client.get("/agents", headers=one), 401, "unauthorized")
    assert client.get("/agents", headers=other).status_code == 200
    assert_error(client.post("/auth/logout", headers=one), 401, "unauthorized")


def test_logout_survives_a_restart(settings: Settings) -> None:
    cert = read_cert(ensure_server_cert(settings).cert)
    with TestClient(create_app(settings, cert=cert)) as first:
        headers = login(first, "alice")
        assert first.post("/auth/logout", headers=headers).status_code == 204
    with TestClient(create_app(settings, cert=cert)) as second:
        assert_error(second.get("/agents", headers=headers), 401, "unauthorized")


def test_removed_user_and_a_new_one_of_the_same_name(client: TestClient, settings: Settings) -> None:
    change_user(client, settings, "add_user", "frank", PASSWORD)
    old = login(client, "frank")
    key = make_key(client, old, "write")
    created = client.post("/query", json={"message": "hi", "session_id": "frank-notes"}, headers=old)
    assert created.status_code == 200, created.text
    change_user(client, settings, "remove_user", "frank")
    change_user(client, settings, "add_user", "frank", "another password")
    assert_error(client.get("/agents", headers=old), 401, "unauthorized")
    assert_error(client.get("/agents", headers=bearer(key["key"])), 401, "unauthorized")
    new = login(client, "frank", "another password")
    assert client.get("/sessions", headers=new).json()["sessions"] == []
    assert_error(client.get("/sessions/frank-notes", headers=new), 404, "not_found")
    refused = client.post("/query", json={"message": "hi", "session_id": "frank-notes"}, headers=new)
    assert_error(refused, 404, "not_found")  # cannot continue the old frank's conversation either


def test_read_key_reads_but_gets_403_on_writes(client: TestClient) -> None:
    key = make_key(client, login(client, "alice"), "read")
    assert str(key["key"]).startswith("spk_")
    assert client.get("/agents", headers=bearer(key["key"])).status_code == 200
    node = {"session_id": "s", "node_type": "entity", "label": "x"}
    body = assert_error(client.post("/graph/nodes", json=node, headers=bearer(key["key"])), 403, "forbidden")
    assert "read-only" in body["error"]
    assert_error(client.post("/query", json={"message": "hi"}, headers=bearer(key["key"])), 403, "forbidden")


def test_write_key_works_like_a_login_and_a_revoked_key_is_401(client: TestClient) -> None:
    headers = login(client, "alice")
    key = make_key(client, headers, "write", expires_days=None)
    assert key["expires_at"] is None
    node = {"session_id": "keys", "node_type": "entity", "label": "x"}
    assert client.post("/graph/nodes", json=node, headers=bearer(key["key"])).status_code == 201
    revoked = client.delete(f"/auth/keys/{key['id']}", headers=headers)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"]
    assert_error(client.get("/agents", headers=bearer(key["key"])), 401, "unauthorized")


def test_keys_are_listed_to_their_owner_and_admins_and_never_shown_again(client: TestClient) -> None:
    alice, bob, root = login(client, "alice"), login(client, "bob"), login(client, "root")
    key = make_key(client, alice, "read")
    listed = client.get("/auth/keys", headers=alice).json()["keys"]
    assert [k["id"] for k in listed] == [key["id"]]
    assert "key" not in listed[0]
    assert "key_hash" not in listed[0]
    assert client.get("/auth/keys", headers=bob).json()["keys"] == []
    assert [k["owner"] for k in client.get("/auth/keys", headers=root).json()["keys"]] == ["alice"]
    assert_error(client.delete(f"/auth/keys/{key['id']}", headers=bob), 404, "not_found")
    assert client.get("/agents", headers=bearer(key["key"])).status_code == 200  # bob's attempt did nothing
    assert client.delete(f"/auth/keys/{key['id']}", headers=root).status_code == 200


def test_a_key_is_never_wider_than_its_account_or_the_token_that_made_it(client: TestClient) -> None:
    alice = login(client, "alice")
    for scope in ("mesh", "admin"):
        response = client.post("/auth/keys", json={"name": "x", "scope": scope}, headers=alice)
        assert_error(response, 403, "forbidden")
    root = login(client, "root")
    write_key = make_key(client, root, "write")
    response = client.post(
        "/auth/keys", json={"name": "x", "scope": "admin"}, headers=bearer(write_key["key"])
    )
    assert_error(response, 403, "forbidden")
    assert make_key(client, login(client, "relay"), "mesh")["scope"] == "mesh"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "", "scope": "read"},
        {"name": "x\u0001", "scope": "read"},
        {"name": "x" * 65, "scope": "read"},
        {"name": "x", "scope": "everything"},
        {"name": "x", "scope": "read", "expires_days": 0},
        {"name": "x", "scope": "read", "expires_days": 3651},
        {"name": "x", "scope": "read", "expires_days": True},
        {"name": "x", "scope": "read", "extra": 1},
    ],
)
def test_bad_key_requests_are_400(client: TestClient, body: dict[str, object]) -> None:
    assert_error(client.post("/auth/keys", json=body, headers=login(client, "alice")), 400, "invalid_request")


@pytest.mark.parametrize("forged", ["spk_0123456789abcdef_" + "A" * 43, "spk_nothex", "spk_"])
def test_forged_keys_are_401(client: TestClient, forged: str) -> None:
    assert_error(client.get("/agents", headers=bearer(forged)), 401, "unauthorized")


def test_a_user_account_gets_403_on_mesh_routes_and_a_mesh_account_does_not(client: TestClient) -> None:
    assert_error(client.get("/registry/agents", headers=login(client, "alice")), 403, "forbidden")
    assert client.get("/registry/agents", headers=login(client, "relay")).status_code == 200
    assert client.get("/registry/agents", headers=login(client, "root")).status_code == 200


def test_whoami_names_the_account_and_scope_behind_each_token(client: TestClient) -> None:
    alice = client.get("/auth/whoami", headers=login(client, "alice")).json()
    assert (alice["username"], alice["role"], alice["scope"], alice["auth_enabled"]) == (
        "alice",
        "user",
        "write",
        True,
    )
    read_key = make_key(client, login(client, "bob"), "read")
    bob = client.get("/auth/whoami", headers=bearer(read_key["key"])).json()
    assert (bob["username"], bob["scope"]) == ("bob", "read")  # the key's scope, not the account's
    assert bob["user_id"] != alice["user_id"]
    assert_error(client.get("/auth/whoami"), 401, "unauthorized")
    assert_error(client.get("/auth/whoami", headers=bearer("spk_nope")), 401, "unauthorized")


def test_auth_hash_refuses_a_password_shorter_than_the_minimum(client: TestClient) -> None:
    headers = login(client, "alice")
    assert_error(
        client.post("/auth/hash", json={"password": "short"}, headers=headers), 400, "invalid_request"
    )
    assert client.post("/auth/hash", json={"password": "long enough"}, headers=headers).status_code == 200
