"""Two real `specai server` processes (own homes, own ports) sharing one PostgreSQL database and one token secret act
as one service for accounts: tokens, users added or changed with the real CLI, API key revocation, `auth import`;
and a server on PostgreSQL refuses to start without a token secret or without users."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from databases import pg_admin_url, pg_execute
from live import PASSWORD, ServerProcess, add_user, free_port, make_home, run_cli, wait_until
from sqlalchemy.engine import make_url

from specai import auth

pytestmark = pytest.mark.live
SECRET = "a-token-secret-every-server-of-this-test-shares"
PROMISE_SECS = 1.5  # the promise is 1 s; checked with a margin for a busy machine


def config(url: str, secret: str | None = SECRET) -> str:
    lines = ["[auth]", "enabled = true"]
    if secret:
        lines.append(f'token_secret = "{secret}"')
    return "\n".join([*lines, "", "[database]", f'url = "{url}"', ""])


@dataclass
class Pair:
    a: ServerProcess
    b: ServerProcess

    @property
    def both(self) -> tuple[ServerProcess, ServerProcess]:
        return self.a, self.b


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Pair]:
    """Servers A and B on this module's database, with admin root and user alice in it."""
    pg_execute(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    root = tmp_path_factory.mktemp("shared-auth")
    homes = [make_home(root, name) for name in ("a", "b")]
    for home in homes:
        (home / "spec-ai.config.toml").write_text(config(pg_url))
    add_user(homes[0], "root")  # into the database: that is where both servers read users
    add_user(homes[0], "alice")
    servers = [ServerProcess(home).start() for home in homes]
    try:
        yield Pair(*servers)
    finally:
        for server in servers:
            server.stop()


def status(server: ServerProcess, token: str) -> int:
    with server.client(token) as client:
        return client.get("/auth/whoami").status_code


def refused_within(server: ServerProcess, token: str, since: float, what: str) -> float:
    """Wait until `server` refuses `token`; return how long after `since` (a monotonic time) that was."""
    wait_until(lambda: status(server, token) == 401, PROMISE_SECS, what, every=0.02)
    elapsed = time.monotonic() - since
    assert elapsed < PROMISE_SECS, f"{what} took {elapsed:.2f} s"
    return elapsed


def test_a_token_from_a_works_on_b_and_back(pair: Pair) -> None:
    from_a, from_b = pair.a.login("alice"), pair.b.login("alice")
    assert (status(pair.b, from_a), status(pair.a, from_b)) == (200, 200)
    with pair.b.client(from_a) as client:
        assert client.get("/auth/whoami").json()["username"] == "alice"


def test_a_user_added_with_the_cli_logs_in_on_both_without_restarts(pair: Pair) -> None:
    added = run_cli(pair.a.home, "auth", "add-user", "carol", "--password-stdin", input="carols password\n")
    assert added.returncode == 0, added.stderr
    assert "in database postgresql://" in added.stdout
    for server in pair.both:  # at once: a login reads its user from the database
        token = server.login("carol", "carols password")
        assert (status(pair.a, token), status(pair.b, token)) == (200, 200)
    listed = run_cli(pair.b.home, "auth", "list-users", "--json")
    assert "carol" in [u["username"] for u in json.loads(listed.stdout)["users"]]


def test_a_password_change_on_a_ends_the_old_token_on_b_within_a_second(pair: Pair) -> None:
    old = pair.a.login("alice")
    assert status(pair.b, old) == 200  # B has checked it once: from now on it answers from its caches
    changed = run_cli(pair.a.home, "auth", "passwd", "alice", "--password-stdin", input="a new password\n")
    since = time.monotonic()
    assert changed.returncode == 0, changed.stderr
    refused_within(pair.b, old, since, "the old token refused on B")
    assert status(pair.a, old) == 401
    for server in pair.both:
        assert status(server, server.login("alice", "a new password")) == 200
    reset = run_cli(pair.b.home, "auth", "passwd", "alice", "--password-stdin", input=PASSWORD + "\n")
    assert reset.returncode == 0, reset.stderr


def test_an_api_key_revoked_through_a_fails_on_b_within_a_second(pair: Pair) -> None:
    token = pair.a.login("alice")
    with pair.a.client(token) as on_a:
        made = on_a.post("/auth/keys", json={"name": "shared", "scope": "read"})
        assert made.status_code == 201, made.text
        key = made.json()
        assert status(pair.b, key["key"]) == 200  # now cached on B
        assert on_a.delete(f"/auth/keys/{key['id']}").status_code == 200
    since = time.monotonic()
    refused_within(pair.b, key["key"], since, "the revoked key refused on B")
    with pair.b.client(key["key"]) as on_b:
        body = on_b.get("/auth/whoami").json()
    assert body["code"] == "unauthorized"


def test_a_logout_on_b_ends_the_token_on_a(pair: Pair) -> None:
    token = pair.a.login("alice")
    assert status(pair.a, token) == 200
    with pair.b.client(token) as on_b:
        assert on_b.post("/auth/logout").status_code == 204
    refused_within(pair.a, token, time.monotonic(), "the logged-out token refused on A")


def test_auth_import_of_a_seed_file_then_login_on_both(pair: Pair, tmp_path: Path) -> None:
    seed = tmp_path / "credentials.json"
    seed.write_text(
        json.dumps(
            [
                {"username": "seeded", "password_hash": auth.legacy_hash("seeded password")},
                {"username": "root", "password_hash": auth.legacy_hash("not roots")},
            ]
        )
    )
    done = run_cli(pair.b.home, "auth", "import", str(seed), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["added"], summary["skipped"]) == (["seeded"], ["root"])
    assert summary["database"].startswith("postgresql://")
    for server in pair.both:
        token = server.login("seeded", "seeded password")  # the first login also upgrades the legacy hash
        assert status(server, token) == 200
    listed = json.loads(run_cli(pair.a.home, "auth", "list-users", "--json").stdout)
    schemes = {u["username"]: u["hash_scheme"] for u in listed["users"]}
    assert schemes["seeded"] == "argon2id"
    assert status(pair.a, pair.a.login("root")) == 200  # skipped: root's password is the database's


def test_a_server_on_postgresql_without_a_token_secret_is_refused(tmp_path: Path, pg_url: str) -> None:
    home = make_home(tmp_path, "no-secret")
    (home / "spec-ai.config.toml").write_text(config(pg_url, secret=None))
    refused = run_cli(home, "server", "--port", str(free_port()), SPECAI_AUTH_TOKEN_SECRET="")
    assert refused.returncode == 1, refused.stderr
    assert "[auth] token_secret is not set" in refused.stderr
    assert "every server sharing the database must sign tokens with the same secret" in refused.stderr
    assert 'python -c "import secrets; print(secrets.token_urlsafe(48))"' in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (home / "token_secret").exists()  # none made up either


@pytest.fixture
def empty_database() -> Iterator[str]:
    admin = pg_admin_url()
    name = f"specai_test_empty_{secrets.token_hex(4)}"
    pg_execute(admin, f'CREATE DATABASE "{name}"')
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        pg_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_server_on_an_empty_users_table_is_refused(tmp_path: Path, empty_database: str) -> None:
    home = make_home(tmp_path, "nobody")
    (home / "spec-ai.config.toml").write_text(config(empty_database))
    refused = run_cli(home, "server", "--port", str(free_port()))
    assert refused.returncode == 3, refused.stderr
    assert "the database has no users" in refused.stderr
    assert "`specai auth add-user`" in refused.stderr
    assert "`specai auth import FILE`" in refused.stderr
    assert "Traceback" not in refused.stderr
