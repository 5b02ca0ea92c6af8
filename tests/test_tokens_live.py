"""Revocation as users meet it: a real server (SQLite and PostgreSQL), the real CLI, real TLS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from databases import ENGINES, database_toml
from live import PASSWORD, ServerProcess, add_user, cli_login, run_cli, settled

from helpers import assert_error

pytestmark = pytest.mark.live


@pytest.fixture(scope="module", params=ENGINES)
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server per engine with admin root and users alice and bob."""
    home = tmp_path_factory.mktemp(f"tokens-{request.param}")
    database = database_toml(request)
    (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\n" + database)
    for name in ("root", "alice", "bob"):
        add_user(home, name)
    server = ServerProcess(home).start()
    yield server
    server.stop()
    server.close()


def status(server: ServerProcess, token: str, path: str = "/agents") -> int:
    with server.client(token) as client:
        return client.get(path).status_code


def test_a_token_issued_before_auth_passwd_is_401_right_after(live: ServerProcess, client_home: Path) -> None:
    token = cli_login(client_home, live, "bob")
    assert status(live, token) == 200
    changed = run_cli(live.home, "auth", "passwd", "bob", "--password-stdin", input="a new password\n")
    assert changed.returncode == 0, changed.stderr
    assert "revoked" in changed.stdout
    settled(live.home, lambda: status(live, token) == 401, "the old token refused")
    with live.client(token) as client:
        assert_error(client.get("/agents"), 401, "unauthorized")
    assert status(live, cli_login(client_home, live, "bob", "a new password")) == 200
    reset = run_cli(live.home, "auth", "passwd", "bob", "--password-stdin", input=PASSWORD + "\n")
    assert reset.returncode == 0, reset.stderr


def test_auth_revoke_user_ends_all_of_their_tokens(live: ServerProcess, client_home: Path) -> None:
    first = cli_login(client_home, live, "alice")
    second = cli_login(client_home, live, "alice")
    assert run_cli(live.home, "auth", "revoke", "alice").returncode == 0
    settled(live.home, lambda: (status(live, first), status(live, second)) == (401, 401), "both refused")


def test_specai_logout_makes_its_token_401(live: ServerProcess, client_home: Path) -> None:
    token = cli_login(client_home, live, "alice")
    result = run_cli(client_home, "logout", "--server", live.url)
    assert result.returncode == 0, result.stderr
    assert "revoked" in result.stdout
    assert status(live, token) == 401
    again = run_cli(client_home, "logout", "--server", live.url)
    assert again.returncode == 0
    assert "not logged in" in again.stdout


def test_api_keys_from_the_cli_read_key_403_on_writes_revoked_key_401(
    live: ServerProcess, client_home: Path
) -> None:
    cli_login(client_home, live, "alice")
    made = run_cli(client_home, "auth", "token", "create", "--name", "dashboard", "--server", live.url)
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("spk_")
    assert "shown only this once" in made.stderr
    with live.client(key) as client:
        assert client.get("/agents").status_code == 200
        node = {"session_id": "alice-keys", "node_type": "entity", "label": "x"}
        assert_error(client.post("/graph/nodes", json=node), 403, "forbidden")
    listed = run_cli(client_home, "auth", "token", "list", "--json", "--server", live.url)
    assert listed.returncode == 0, listed.stderr
    (entry,) = [k for k in json.loads(listed.stdout)["keys"] if k["name"] == "dashboard"]
    assert entry["scope"] == "read"
    assert "key" not in entry
    assert key not in listed.stdout
    revoked = run_cli(client_home, "auth", "token", "revoke", entry["id"], "--server", live.url)
    assert revoked.returncode == 0, revoked.stderr
    with live.client(key) as client:
        assert_error(client.get("/agents"), 401, "unauthorized")
    too_wide = run_cli(
        client_home, "auth", "token", "create", "--name", "x", "--scope", "admin", "--server", live.url
    )
    assert too_wide.returncode == 1
    assert "cannot hold keys of scope" in too_wide.stderr
    bad = run_cli(
        client_home, "auth", "token", "create", "--name", "x", "--expires", "soon", "--server", live.url
    )
    assert bad.returncode == 2
    assert "--expires" in bad.stderr


def test_a_new_frank_is_not_the_old_frank(live: ServerProcess, client_home: Path) -> None:
    add_user(live.home, "frank")
    old = cli_login(client_home, live, "frank")
    asked = run_cli(
        client_home,
        "query",
        "remember me",
        "--session",
        "frank-diary",
        "--new",
        "--no-stream",
        "--server",
        live.url,
    )
    assert asked.returncode == 0, asked.stderr
    assert run_cli(live.home, "auth", "remove-user", "frank").returncode == 0
    add_user(live.home, "frank", password="the new frank")
    settled(live.home, lambda: status(live, old) == 401, "the old frank's token refused")
    new = cli_login(client_home, live, "frank", "the new frank")
    with live.client(new) as client:
        assert client.get("/sessions").json()["sessions"] == []
        assert_error(client.get("/sessions/frank-diary"), 404, "not_found")
    listed = run_cli(live.home, "auth", "list-users", "--json")
    roles = {u["username"]: u["role"] for u in json.loads(listed.stdout)["users"]}
    assert roles == {"root": "admin", "alice": "user", "bob": "user", "frank": "user"}
