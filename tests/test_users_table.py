"""Users in the shared database: the table's operations and `DatabaseDirectory` on SQLite and PostgreSQL, changes
seen across two stores (two "processes") through the change counters, revocations and API keys shared, the token
secret rule, and two in-process apps on one PostgreSQL database acting as one service."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from litestar import Litestar

from specai import auth
from specai.config import AuthSettings, Settings
from specai.errors import (
    ConfigError,
    ConflictError,
    CredentialsError,
    InvalidRequestError,
    NotFoundError,
    TokenError,
)
from specai.server.app import create_app
from specai.server.security import MemoryTokenCache, TokenVerifier, Verified
from specai.store import Store, versions
from specai.store.listener import Listener
from specai.store.versions import VERSION_CHANNEL, VersionWatcher
from specai.users import table
from specai.users.access import Principal
from specai.users.directory import User
from specai.users.keys import ApiKey, ApiKeyStore, StoredRevocations
from specai.users.table import DatabaseDirectory

pytestmark = pytest.mark.anyio
PASSWORD = "pw-one-two"
SECRET = "u" * 40


async def counter(store: Store, name: str = "users") -> int:
    async with store.connect() as conn:
        return (await versions.read(conn)).get(name, 0)


async def eventually(check: Callable[[], Any], what: str, within: float = 5.0) -> Any:
    """Poll `check` (sync or async) until it is truthy; fail after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def second_store(db_settings: Settings) -> AsyncIterator[Store]:
    """Another store on the same database: what another process sharing it would have."""
    other = await Store.open(db_settings)
    try:
        yield other
    finally:
        await other.close()


# --- the table ---------------------------------------------------------------------------------------------------


async def test_add_user_gives_a_fresh_id_the_first_one_admin_and_moves_the_counter(store: Store) -> None:
    assert await table.count_users(store) == 0
    root = await table.add_user(store, "root", PASSWORD)
    alice = await table.add_user(store, "alice", PASSWORD)
    relay = await table.add_user(store, "relay", PASSWORD, "mesh")
    assert (root.role, alice.role, relay.role) == ("admin", "user", "mesh")
    assert all(u.id.startswith("u-") and len(u.id) == 34 for u in (root, alice, relay))
    assert len({root.id, alice.id, relay.id}) == 3
    assert [u.username for u in await table.list_users(store)] == ["root", "alice", "relay"]
    assert await table.get_user(store, "alice") == alice
    assert auth.verify_password(alice.password_hash, PASSWORD)
    assert alice.password_hash.startswith("$argon2id")
    assert await counter(store) == 3
    assert await table.count_users(store) == 3


async def test_add_user_refuses_a_taken_name_a_bad_name_and_an_empty_password(store: Store) -> None:
    await table.add_user(store, "alice", PASSWORD)
    with pytest.raises(ConflictError, match=r"already exists in the database.*auth passwd alice"):
        await table.add_user(store, "alice", "another")
    with pytest.raises(InvalidRequestError, match="invalid username"):
        await table.add_user(store, "-bad", PASSWORD)
    with pytest.raises(InvalidRequestError, match="must not be empty"):
        await table.add_user(store, "bob", "")
    assert [u.username for u in await table.list_users(store)] == ["alice"]
    assert await counter(store) == 1  # refused changes roll their counter move back


async def test_concurrent_first_users_make_exactly_one_admin(store: Store, db_settings: Settings) -> None:
    async with second_store(db_settings) as other:
        made = await asyncio.gather(
            *(table.add_user(s, f"user{i}", PASSWORD) for i, s in enumerate([store, other] * 3))
        )
    assert sorted(u.role for u in made) == ["admin", "user", "user", "user", "user", "user"]


async def test_passwd_set_role_and_revoke_raise_the_generation(store: Store) -> None:
    alice = await table.add_user(store, "alice", PASSWORD)
    await table.add_user(store, "bob", PASSWORD)
    changed = await table.set_password(store, "alice", "a new one")
    assert changed.token_generation == 1
    assert changed.id == alice.id
    assert auth.verify_password(changed.password_hash, "a new one")
    assert (await table.set_role(store, "alice", "mesh")).token_generation == 2
    assert (await table.revoke_tokens(store, "alice")).token_generation == 3
    stored = await table.get_user(store, "alice")
    assert (stored.role, stored.token_generation) == ("mesh", 3)
    assert (await table.get_user(store, "bob")).token_generation == 0  # nobody else's changed
    assert await counter(store) == 5


async def test_unknown_users_are_not_found_with_a_hint_and_move_nothing(store: Store) -> None:
    await table.add_user(store, "alice", PASSWORD)
    for change in (
        table.set_password(store, "ghost", "x"),
        table.set_role(store, "ghost", "admin"),
        table.revoke_tokens(store, "ghost"),
        table.remove_user(store, "ghost"),
        table.get_user(store, "ghost"),
    ):
        with pytest.raises(
            NotFoundError, match=r"no user 'ghost' in the database; see `specai auth list-users`"
        ):
            await change
    assert await counter(store) == 1


async def test_remove_user_and_a_new_one_of_the_same_name_is_someone_else(store: Store) -> None:
    old = await table.add_user(store, "frank", PASSWORD)
    await table.remove_user(store, "frank")
    assert await table.list_users(store) == []
    new = await table.add_user(store, "frank", PASSWORD)
    assert new.id != old.id
    assert new.role == "admin"  # the only user again


async def test_replace_hash_only_over_the_expected_hash(store: Store) -> None:
    legacy = auth.legacy_hash(PASSWORD)
    await table.import_users(store, [User("old", legacy)])
    before = await counter(store)
    kept = await table.replace_hash(store, "old", "$argon2id$v=19$m=8,t=1,p=1$x$y", expected="something else")
    assert kept.password_hash == legacy
    assert await counter(store) == before  # nothing changed: nobody reloads
    upgraded = await table.replace_hash(store, "old", auth.hash_password(PASSWORD), expected=legacy)
    assert upgraded.scheme == "argon2id"
    assert upgraded.token_generation == 0  # tokens stay valid
    assert await counter(store) == before + 1


async def test_require_users_refuses_an_empty_table_naming_both_fixes(store: Store) -> None:
    with pytest.raises(CredentialsError) as refused:
        await table.require_users(store)
    assert "`specai auth add-user`" in refused.value.message
    assert "`specai auth import FILE`" in refused.value.message
    await table.add_user(store, "alice", PASSWORD)
    await table.require_users(store)


async def test_import_keeps_ids_skips_or_replaces_existing_names(store: Store) -> None:
    mine = await table.add_user(store, "root", PASSWORD)
    hashed = auth.hash_password("from the file")
    entries = [
        User("root", hashed, "user", "root-in-file", 4),
        User("alice", hashed, "user", "u-alice-from-file", 2),
        User("bob", hashed),
    ]
    done = await table.import_users(store, entries)
    assert (done.added, done.replaced, done.skipped) == (["alice", "bob"], [], ["root"])
    assert await table.get_user(store, "root") == mine  # skipped: untouched
    alice = await table.get_user(store, "alice")
    assert (alice.id, alice.token_generation, alice.role) == ("u-alice-from-file", 2, "user")
    assert (await table.get_user(store, "bob")).id == "bob"  # the seed format: the name is the id
    again = await table.import_users(store, entries, replace_existing=True)
    assert (again.added, again.replaced, again.skipped) == ([], ["root", "alice", "bob"], [])
    root = await table.get_user(store, "root")
    assert (root.id, root.role, root.password_hash) == (mine.id, "user", hashed)  # its database id stays
    assert root.token_generation == 4  # past both: every earlier token is revoked
    assert (await table.get_user(store, "alice")).token_generation == 3


async def test_import_refuses_an_id_another_name_has_and_imports_nothing(store: Store) -> None:
    await table.import_users(store, [User("alice", auth.hash_password(PASSWORD), "admin", "shared-id")])
    before = await counter(store)
    entries = [
        User("carol", auth.hash_password(PASSWORD)),
        User("mallory", auth.hash_password(PASSWORD), id="shared-id"),
    ]
    with pytest.raises(
        ConflictError, match=r"'mallory' has id 'shared-id', which user 'alice'.*nothing was imported"
    ):
        await table.import_users(store, entries)
    assert [u.username for u in await table.list_users(store)] == ["alice"]
    assert await counter(store) == before


# --- DatabaseDirectory ---------------------------------------------------------------------------------------------


async def test_directory_refuses_to_open_on_no_users(store: Store) -> None:
    with pytest.raises(CredentialsError, match="the database has no users"):
        await DatabaseDirectory().open(store)


async def test_directory_answers_from_memory_with_the_same_objects(store: Store) -> None:
    alice = await table.add_user(store, "alice", PASSWORD)
    bob = await table.add_user(store, "bob", PASSWORD)
    directory = DatabaseDirectory()
    await directory.open(store)
    assert len(directory) == 2
    first = directory.get("alice")
    assert first == alice
    assert directory.get("alice") is first
    assert directory.by_id(alice.id) is first
    assert directory.get("nobody") is None
    assert directory.by_id("u-nobody") is None
    await table.set_role(store, "bob", "mesh")
    assert directory.get("bob") == bob  # no query per lookup: the change counts at the next reload
    kept_bob = directory.get("bob")
    await directory.reload()
    assert directory.get("alice") is first  # unchanged: the very same object
    assert directory.get("bob") is not kept_bob
    assert directory.get("bob") == dataclasses.replace(bob, role="mesh", token_generation=1)
    await table.remove_user(store, "alice")
    await directory.reload()
    assert (directory.get("alice"), directory.by_id(alice.id), len(directory)) == (None, None, 1)


async def test_directory_login_reads_its_user_afresh(store: Store) -> None:
    await table.add_user(store, "root", PASSWORD)
    directory = DatabaseDirectory()
    await directory.open(store)
    await table.add_user(store, "carol", PASSWORD)  # elsewhere, after the last reload
    carol = await directory.login("carol", PASSWORD)
    assert carol is not None
    assert directory.get("carol") is carol  # the login put the fresh row in the snapshot
    assert await directory.login("carol", "wrong") is None
    assert await directory.login("nobody", PASSWORD) is None
    await table.set_password(store, "carol", "changed elsewhere")
    assert await directory.login("carol", PASSWORD) is None
    changed = await directory.login("carol", "changed elsewhere")
    assert changed is not None
    assert changed.token_generation == 1
    await table.remove_user(store, "carol")
    assert await directory.login("carol", "changed elsewhere") is None
    assert directory.get("carol") is None


async def test_directory_login_upgrades_a_legacy_hash_in_the_database(store: Store) -> None:
    await table.import_users(store, [User("old", auth.legacy_hash("old secret"), "admin")])
    directory = DatabaseDirectory()
    await directory.open(store)
    assert await directory.login("old", "not it") is None
    assert (await table.get_user(store, "old")).scheme == "pbkdf2-legacy"  # a wrong password upgrades nothing
    assert await directory.login("old", "old secret") is not None
    stored = await table.get_user(store, "old")
    assert stored.scheme == "argon2id"
    assert auth.verify_password(stored.password_hash, "old secret")
    assert stored.token_generation == 0
    assert await directory.login("old", "old secret") is not None


async def test_two_directories_see_each_others_changes_through_the_watcher(
    store: Store, db_settings: Settings
) -> None:
    """Two stores are two processes; the watcher polls the counters (on PostgreSQL a NOTIFY wakes it too)."""
    await table.add_user(store, "alice", PASSWORD)
    async with second_store(db_settings) as other:
        here, there = DatabaseDirectory(), DatabaseDirectory()
        await here.open(store)
        await there.open(other)
        watcher = VersionWatcher(other, poll_secs=0.05)
        watcher.on_change(table.USERS, there.reload)
        await watcher.prime()
        running = asyncio.create_task(watcher.run())
        try:
            alice = there.get("alice")
            await table.add_user(store, "bob", PASSWORD)
            await eventually(lambda: there.get("bob") is not None, "bob to appear on the other side")
            assert there.get("alice") is alice
            await table.set_password(store, "alice", "new")
            await eventually(lambda: there.get("alice") is not alice, "alice's new generation")
            assert there.get("alice").token_generation == 1  # type: ignore[union-attr]
            await table.remove_user(store, "bob")
            await eventually(lambda: there.get("bob") is None, "bob to go")
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


@pytest.mark.parametrize("db_settings", ["postgresql"], indirect=True)
async def test_a_notify_reloads_the_other_process_without_waiting_for_its_poll(
    store: Store, db_settings: Settings
) -> None:
    await table.add_user(store, "alice", PASSWORD)
    async with second_store(db_settings) as other:
        there = DatabaseDirectory()
        await there.open(other)
        watcher = VersionWatcher(other, poll_secs=60)  # only a NOTIFY can wake it within the test
        watcher.on_change(table.USERS, there.reload)
        listener = Listener(other.engine.url)
        listener.subscribe(VERSION_CHANNEL, watcher.wake)
        await watcher.prime()
        await listener.start()
        running = asyncio.create_task(watcher.run())
        try:
            await asyncio.sleep(
                0.1
            )  # let it settle into its 60 s wait (the listener's first wake-up is over)
            await table.revoke_tokens(store, "alice")
            await eventually(lambda: there.get("alice").token_generation == 1, "the NOTIFY", within=3)  # type: ignore[union-attr]
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            await listener.close()


# --- tokens: the verifier follows the directory ----------------------------------------------------------------


def verifier_on(store: Store, directory: DatabaseDirectory) -> tuple[TokenVerifier, StoredRevocations]:
    keys, revocations = ApiKeyStore(store), StoredRevocations(store)
    return TokenVerifier(
        SECRET, directory, lambda: keys, lambda: revocations, MemoryTokenCache()
    ), revocations


async def test_the_verifier_keeps_hitting_while_the_user_object_stays_and_refuses_a_new_generation(
    store: Store,
) -> None:
    alice = await table.add_user(store, "alice", PASSWORD)
    await table.add_user(store, "bob", PASSWORD)
    directory = DatabaseDirectory()
    await directory.open(store)
    verifier, _ = verifier_on(store, directory)
    token, _ = auth.issue_token(SECRET, "alice", 600, user_id=alice.id)
    first = await verifier.principal(token)
    cached = verifier.cache.get(token)
    assert cached is not None
    assert cached.user is directory.get("alice")
    await table.set_role(store, "bob", "mesh")  # someone else changes: alice's object stays
    await directory.reload()
    assert await verifier.principal(token) is first  # the cached principal, not a new one
    await table.set_role(store, "alice", "mesh")
    await directory.reload()
    with pytest.raises(TokenError, match="revoked"):
        await verifier.principal(token)


async def test_a_fresh_token_of_a_change_not_loaded_yet_is_checked_against_the_database(store: Store) -> None:
    alice = await table.add_user(store, "alice", PASSWORD)
    directory = DatabaseDirectory()
    await directory.open(store)
    verifier, _ = verifier_on(store, directory)
    changed = await table.set_password(store, "alice", "elsewhere")  # another process; no reload here
    token, _ = auth.issue_token(SECRET, "alice", 600, user_id=alice.id, generation=changed.token_generation)
    assert (await verifier.principal(token)).user_id == alice.id
    carol = await table.add_user(store, "carol", PASSWORD)
    fresh, _ = auth.issue_token(SECRET, "carol", 600, user_id=carol.id)
    assert (await verifier.principal(fresh)).name == "carol"
    old, _ = auth.issue_token(SECRET, "alice", 600, user_id=alice.id)  # generation 0: plainly revoked
    with pytest.raises(TokenError, match="revoked"):
        await verifier.principal(old)


async def test_revocations_and_revoked_keys_reach_the_other_process(
    store: Store, db_settings: Settings
) -> None:
    owner = await table.add_user(store, "alice", PASSWORD)
    async with second_store(db_settings) as other:
        here, there = DatabaseDirectory(), DatabaseDirectory()
        await here.open(store)
        await there.open(other)
        _, revoked_here = verifier_on(store, here)
        verifier_there, revoked_there = verifier_on(other, there)
        await revoked_there.load()
        watcher = VersionWatcher(other, poll_secs=0.05)
        watcher.on_change("revocations", revoked_there.reload)
        watcher.on_change("keys", verifier_there.forget_keys)
        await watcher.prime()
        running = asyncio.create_task(watcher.run())
        try:
            token, claims = auth.issue_token(SECRET, "alice", 600, user_id=owner.id)
            assert (await verifier_there.principal(token)).name == "alice"
            expires = dt.datetime.fromtimestamp(claims.exp, dt.UTC)
            await revoked_here.revoke(claims.jti, owner.id, expires)
            await eventually(lambda: revoked_there.is_revoked(claims.jti), "the revoked id over there")
            with pytest.raises(TokenError, match="revoked"):
                await verifier_there.principal(token)
            who = Principal(owner.id, "alice", "admin", "admin")
            key_record, key = await ApiKeyStore(store).create(who, "ci", "read", None)
            assert (await verifier_there.principal(key)).scope == "read"  # now cached over there
            await ApiKeyStore(store).revoke(key_record.id, owner.id)
            await eventually(lambda: verifier_there.cache.get(key) is None, "the cached key to go")
            with pytest.raises(TokenError, match="revoked API key"):
                await verifier_there.principal(key)
            before = await counter(store, "keys")
            await ApiKeyStore(store).revoke(key_record.id, owner.id)  # revoked already: nobody reloads
            assert await counter(store, "keys") == before
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


def test_discard_keys_forgets_every_api_key_and_no_jwt() -> None:
    cache = MemoryTokenCache()
    now = dt.datetime.now(dt.UTC)
    for name in ("a", "b"):
        key = ApiKey(name, "u-1", "alice", name, "read", now, None, None)
        cache.put(f"spk_{name}", Verified(1e12, key=key))
    claims = auth.decode_token(SECRET, auth.issue_token(SECRET, "alice", 600)[0])
    cache.put("jwt", Verified(1e12, claims=claims))
    cache.discard_keys()
    assert (cache.get("spk_a"), cache.get("spk_b")) == (None, None)
    assert cache.get("jwt") is not None


# --- the token secret ---------------------------------------------------------------------------------------------


def test_postgresql_with_auth_needs_a_configured_token_secret(db_settings: Settings) -> None:
    shared = db_settings.database.url is not None
    with_auth = dataclasses.replace(db_settings, auth=AuthSettings(enabled=True))
    if shared:
        with pytest.raises(ConfigError) as refused:
            auth.load_token_secret(with_auth)
        message = refused.value.message
        assert "[auth] token_secret" in message
        assert "every server sharing the database" in message
        assert "secrets.token_urlsafe(48)" in message
        assert "SPECAI_AUTH_TOKEN_SECRET" in message
        assert not (db_settings.home / "token_secret").exists()
    else:
        assert len(auth.load_token_secret(with_auth)) >= 32  # SQLite: generated once in the home
        assert (db_settings.home / "token_secret").exists()
    configured = dataclasses.replace(db_settings, auth=AuthSettings(enabled=True, token_secret=SECRET))
    assert auth.load_token_secret(configured) == SECRET
    assert len(auth.load_token_secret(db_settings)) >= 32  # auth off: nobody shares tokens, none needed


# --- two in-process apps on one PostgreSQL database ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def serving(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar is an ASGI app; the stubs disagree
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def login(client: httpx.AsyncClient, name: str, password: str = PASSWORD) -> dict[str, str]:
    response = await client.post("/auth/token", json={"username": name, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


async def status(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    return (await client.get("/auth/whoami", headers=headers)).status_code


async def refused_within(client: httpx.AsyncClient, headers: dict[str, str], what: str) -> None:
    """Wait (at most 1.5 s: the promise is 1 s) until the token of `headers` is refused with 401."""

    async def refused() -> bool:
        return await status(client, headers) == 401

    await eventually(refused, what, within=1.5)


@pytest.mark.parametrize("db_settings", ["postgresql"], indirect=True)
async def test_two_apps_on_one_database_act_as_one_service(store: Store, db_settings: Settings) -> None:
    settings = dataclasses.replace(db_settings, auth=AuthSettings(enabled=True, token_secret=SECRET))
    homes = [dataclasses.replace(settings, home=settings.home / name) for name in ("a", "b")]
    await table.add_user(store, "root", PASSWORD)
    await table.add_user(store, "alice", PASSWORD)
    async with (
        second_store(db_settings) as other,
        serving(create_app(homes[0], store=store)) as a,
        serving(create_app(homes[1], store=other)) as b,
    ):
        alice = await login(a, "alice")
        assert await status(b, alice) == 200  # a token from A works on B
        await table.add_user(store, "dave", PASSWORD)  # `specai auth add-user`, elsewhere
        dave = await login(b, "dave")  # at once: the login reads dave afresh
        assert await status(a, dave) == 200  # and A takes B's fresh token, loaded or not
        await table.set_password(store, "alice", "changed")  # `specai auth passwd`
        await refused_within(b, alice, "the old token to fail on B")
        await refused_within(a, alice, "the old token to fail on A")  # A reloads on its own (within 1 s)
        new = await login(b, "alice", "changed")
        key = (await a.post("/auth/keys", json={"name": "ci"}, headers=new)).json()
        assert await status(b, {"Authorization": f"Bearer {key['key']}"}) == 200  # cached on B now
        assert (await a.delete(f"/auth/keys/{key['id']}", headers=new)).status_code == 200
        await refused_within(b, {"Authorization": f"Bearer {key['key']}"}, "the revoked key to fail on B")
        assert (await b.post("/auth/logout", headers=new)).status_code == 204
        await refused_within(a, new, "the logged-out token to fail on A")
        await table.remove_user(store, "dave")
        await refused_within(a, dave, "the removed user's token to fail on A")


@pytest.mark.parametrize("db_settings", ["postgresql"], indirect=True)
async def test_an_app_on_an_empty_users_table_refuses_to_start(store: Store, db_settings: Settings) -> None:
    settings = dataclasses.replace(db_settings, auth=AuthSettings(enabled=True, token_secret=SECRET))
    app = create_app(settings, store=store)  # the database is not open yet: nothing to check here
    with pytest.raises(ExceptionGroup) as refused:  # Litestar's lifespan task group wraps it
        async with serving(app):
            pass
    assert refused.group_contains(
        CredentialsError, match=r"no users.*specai auth add-user.*specai auth import"
    )
