"""`specai auth` user commands with `[database] url` on PostgreSQL act on the database (in process, CliRunner), and
`specai auth import` loads a credentials file there; on SQLite they keep acting on the credentials file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from databases import on_database, pg_execute
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from specai import auth
from specai.cli import app
from specai.config import load_settings
from specai.users import directory, table
from specai.users.directory import User

PASSWORD = "pw-one-two"


@dataclass
class Cli:
    """The CLI on one home whose config points at this module's PostgreSQL database (with a password in the URL,
    which PostgreSQL's trust login ignores: it must never be shown)."""

    home: Path
    url: str  # as configured
    shown: str  # as the CLI must show it

    def __call__(self, *args: str, input: str | None = None) -> Any:
        env = {"SPECAI_HOME": str(self.home), "SPECAI_CONFIG": str(self.home / "spec-ai.config.toml")}
        result = CliRunner().invoke(
            app, list(args), input=input, env={**env, "NO_COLOR": "1", "COLUMNS": "200"}
        )
        assert "hunter2" not in result.stdout + result.stderr
        assert "$argon2" not in result.stdout + result.stderr
        return result

    def users(self) -> dict[str, User]:
        settings = load_settings(env={"SPECAI_HOME": str(self.home)}, cwd=self.home)
        return {u.username: u for u in on_database(settings, table.list_users)}


@pytest.fixture
def cli(tmp_path: Path, pg_url: str) -> Cli:
    pg_execute(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    url = make_url(pg_url).set(password="hunter2").render_as_string(hide_password=False)
    (tmp_path / "spec-ai.config.toml").write_text(f'[auth]\nenabled = true\n[database]\nurl = "{url}"\n')
    return Cli(tmp_path, url, make_url(url).render_as_string(hide_password=True))


def seed_file(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture(scope="module")
def hashed() -> str:
    return auth.hash_password(PASSWORD)


# --- the user commands act on the database -----------------------------------------------------------------------


def test_add_user_and_list_users_act_on_the_database_and_show_it_without_its_password(cli: Cli) -> None:
    added = cli("auth", "add-user", "root", "--password-stdin", input=PASSWORD + "\n")
    assert added.exit_code == 0, added.stderr
    assert added.stdout.strip() == f"added user 'root' (admin) in database {cli.shown}"
    assert (
        cli("auth", "add-user", "bob", "--password-stdin", "--role", "mesh", input=PASSWORD + "\n").exit_code
        == 0
    )
    assert not (cli.home / "credentials.json").exists()
    users = cli.users()
    assert (users["root"].role, users["bob"].role) == ("admin", "mesh")
    assert auth.verify_password(users["root"].password_hash, PASSWORD)
    listed = cli("auth", "list-users", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert json.loads(listed.stdout) == {
        "database": cli.shown,
        "users": [
            {"username": "root", "role": "admin", "id": users["root"].id, "hash_scheme": "argon2id"},
            {"username": "bob", "role": "mesh", "id": users["bob"].id, "hash_scheme": "argon2id"},
        ],
    }
    table_out = cli("auth", "list-users")
    assert cli.shown in table_out.stdout
    assert "root" in table_out.stdout
    assert "mesh" in table_out.stdout


def test_an_empty_database_lists_no_users_with_both_fixes(cli: Cli) -> None:
    listed = cli("auth", "list-users")
    assert listed.exit_code == 0
    assert "no users in" in listed.stdout
    assert "`specai auth add-user` or `specai auth import FILE`" in listed.stdout
    assert json.loads(cli("auth", "list-users", "--json").stdout) == {"database": cli.shown, "users": []}


def test_a_taken_name_is_refused_naming_the_database(cli: Cli) -> None:
    cli("auth", "add-user", "root", "--password-stdin", input=PASSWORD + "\n")
    again = cli("auth", "add-user", "root", "--password-stdin", input=PASSWORD + "\n")
    assert again.exit_code == 1
    assert "already exists in the database" in again.stderr
    assert "Traceback" not in again.stderr


def test_passwd_set_role_revoke_and_remove_user_act_on_the_database(cli: Cli) -> None:
    cli("auth", "add-user", "root", "--password-stdin", input=PASSWORD + "\n")
    cli("auth", "add-user", "alice", "--password-stdin", input=PASSWORD + "\n")
    changed = cli("auth", "passwd", "alice", "--password-stdin", input="a new password\n")
    assert changed.exit_code == 0, changed.stderr
    assert f"in database {cli.shown}" in changed.stdout
    assert "revoked" in changed.stdout
    alice = cli.users()["alice"]
    assert auth.verify_password(alice.password_hash, "a new password")
    assert alice.token_generation == 1
    role = cli("auth", "set-role", "alice", "mesh")
    assert role.exit_code == 0, role.stderr
    assert f"'alice' is now mesh in database {cli.shown}" in role.stdout
    revoked = cli("auth", "revoke", "alice")
    assert revoked.exit_code == 0, revoked.stderr
    assert cli.shown in revoked.stdout
    assert (cli.users()["alice"].role, cli.users()["alice"].token_generation) == ("mesh", 3)
    removed = cli("auth", "remove-user", "alice")
    assert removed.exit_code == 0, removed.stderr
    assert removed.stdout.strip() == f"removed user 'alice' in database {cli.shown}"
    assert set(cli.users()) == {"root"}


def test_commands_on_an_unknown_user_fail_before_asking_for_a_password(cli: Cli) -> None:
    cli("auth", "add-user", "root", "--password-stdin", input=PASSWORD + "\n")
    for args in (("passwd", "ghost", "--password-stdin"), ("set-role", "ghost", "user"), ("revoke", "ghost")):
        result = cli("auth", *args, input="")  # no password on stdin: passwd must not get that far
        assert result.exit_code == 1, (args, result.stdout, result.stderr)
        assert "no user 'ghost' in the database" in result.stderr
    assert cli("auth", "remove-user", "ghost").exit_code == 1
    short = cli("auth", "passwd", "root", "--password-stdin", input="short\n")
    assert short.exit_code == 2
    assert "too short" in short.stderr


def test_an_explicit_credentials_file_still_acts_on_that_file(cli: Cli) -> None:
    path = cli.home / "elsewhere.json"
    added = cli(
        "auth",
        "add-user",
        "carol",
        "--password-stdin",
        "--credentials-file",
        str(path),
        input=PASSWORD + "\n",
    )
    assert added.exit_code == 0, added.stderr
    assert added.stdout.strip() == f"added user 'carol' (admin) to {path}"
    assert [u.username for u in directory.load_users(path)] == ["carol"]
    assert cli.users() == {}
    listed = json.loads(cli("auth", "list-users", "--json", "--credentials-file", str(path)).stdout)
    assert listed["credentials_file"] == str(path)
    assert "database" not in listed


def test_on_sqlite_the_commands_keep_acting_on_the_credentials_file(tmp_path: Path) -> None:
    env = {"SPECAI_HOME": str(tmp_path), "NO_COLOR": "1"}
    added = CliRunner().invoke(
        app, ["auth", "add-user", "dan", "--password-stdin"], input=PASSWORD + "\n", env=env
    )
    assert added.exit_code == 0, added.stderr
    assert added.stdout.strip() == f"added user 'dan' (admin) to {tmp_path / 'credentials.json'}"
    listed = CliRunner().invoke(app, ["auth", "list-users", "--json"], env=env)
    assert json.loads(listed.stdout)["credentials_file"] == str(tmp_path / "credentials.json")


# --- auth import ---------------------------------------------------------------------------------------------------


def test_import_adds_new_names_keeping_ids_and_skips_existing_ones(cli: Cli, hashed: str) -> None:
    cli("auth", "add-user", "root", "--password-stdin", input=PASSWORD + "\n")
    root = cli.users()["root"]
    source = seed_file(
        cli.home / "credentials.json",
        [
            {"username": "root", "password_hash": hashed},
            {
                "username": "alice",
                "password_hash": hashed,
                "role": "user",
                "id": "u-alice",
                "token_generation": 2,
            },
            {"username": "legacy", "password_hash": auth.legacy_hash("old")},
        ],
    )
    done = cli("auth", "import", str(source))
    assert done.exit_code == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"imported {source} in database {cli.shown}: added 2"
    assert "  added: alice, legacy" in lines
    assert "  skipped (already there; --replace updates them): root" in lines
    users = cli.users()
    assert users["root"] == root
    assert (users["alice"].id, users["alice"].token_generation) == ("u-alice", 2)
    assert (users["legacy"].id, users["legacy"].role, users["legacy"].scheme) == (
        "legacy",
        "user",
        "pbkdf2-legacy",
    )
    again = cli("auth", "import", str(source), "--json")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout) == {
        "database": cli.shown,
        "added": [],
        "replaced": [],
        "skipped": ["root", "alice", "legacy"],
    }


def test_import_replace_updates_hash_and_role_and_revokes_earlier_tokens(cli: Cli, hashed: str) -> None:
    cli("auth", "add-user", "root", "--password-stdin", input=PASSWORD + "\n")
    cli("auth", "add-user", "bob", "--password-stdin", input="bobs password\n")
    before = cli.users()["bob"]
    source = seed_file(
        cli.home / "users.json", [{"username": "bob", "password_hash": hashed, "role": "mesh"}]
    )
    done = cli("auth", "import", str(source), "--replace")
    assert done.exit_code == 0, done.stderr
    assert f"in database {cli.shown}: added 0, replaced 1" in done.stdout
    assert "  replaced: bob" in done.stdout
    bob = cli.users()["bob"]
    assert (bob.id, bob.role, bob.password_hash) == (before.id, "mesh", hashed)
    assert bob.token_generation == before.token_generation + 1
    as_json = cli("auth", "import", str(source), "--replace", "--json")
    assert json.loads(as_json.stdout)["replaced"] == ["bob"]


def test_a_lone_seed_user_is_imported_as_an_admin(cli: Cli, hashed: str) -> None:
    source = seed_file(cli.home / "seed.json", [{"username": "admin", "password_hash": hashed}])
    assert cli("auth", "import", str(source)).exit_code == 0
    assert cli.users()["admin"].role == "admin"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not valid JSON"),
        ('{"username": "a"}', "must hold a JSON list"),
        ('[{"username": "a"}]', "needs string 'username' and 'password_hash'"),
        ('[{"username": "a", "password_hash": "nope"}]', "has an unrecognised hash"),
        ('[{"username": "a", "password_hash": "HASH", "role": "king"}]', "has role 'king'"),
        (
            '[{"username": "a", "password_hash": "HASH"}, {"username": "a", "password_hash": "HASH"}]',
            "appears twice",
        ),
        ('[{"username": "a", "password_hash": "HASH", "token_generation": -1}]', "invalid token_generation"),
    ],
)
def test_an_invalid_file_is_refused_naming_it_and_nothing_is_imported(
    cli: Cli, hashed: str, content: str, message: str
) -> None:
    source = cli.home / "bad.json"
    source.write_text(content.replace("HASH", hashed))
    refused = cli("auth", "import", str(source))
    assert refused.exit_code == 1
    assert f"credentials file {source}" in refused.stderr
    assert message in refused.stderr
    assert "Traceback" not in refused.stderr
    assert cli.users() == {}


def test_an_id_taken_by_another_name_refuses_the_whole_import(cli: Cli, hashed: str) -> None:
    seed_file(cli.home / "one.json", [{"username": "alice", "password_hash": hashed, "id": "u-shared"}])
    assert cli("auth", "import", str(cli.home / "one.json")).exit_code == 0
    source = seed_file(
        cli.home / "two.json",
        [
            {"username": "carol", "password_hash": hashed},
            {"username": "eve", "password_hash": hashed, "id": "u-shared"},
        ],
    )
    refused = cli("auth", "import", str(source))
    assert refused.exit_code == 1
    assert "'eve' has id 'u-shared', which user 'alice' in the database already has" in refused.stderr
    assert set(cli.users()) == {"alice"}


def test_import_of_a_missing_file_names_it(cli: Cli) -> None:
    refused = cli("auth", "import", str(cli.home / "nope.json"))
    assert refused.exit_code == 1
    assert "nope.json does not exist" in refused.stderr


def test_import_on_sqlite_is_refused_in_one_line_with_exit_2(tmp_path: Path, hashed: str) -> None:
    source = seed_file(tmp_path / "credentials.json", [{"username": "a", "password_hash": hashed}])
    env = {"SPECAI_HOME": str(tmp_path), "NO_COLOR": "1", "COLUMNS": "300"}
    refused = CliRunner().invoke(app, ["auth", "import", str(source)], env=env)
    assert refused.exit_code == 2
    (line,) = refused.stderr.splitlines()
    assert "needs [database] url on PostgreSQL" in line
    assert not (tmp_path / "specai.db").exists()  # nothing was opened


def test_import_help_has_examples() -> None:
    shown = CliRunner().invoke(app, ["auth", "import", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert shown.exit_code == 0
    assert "specai auth import ~/.spec-ai/credentials.json" in shown.stdout
    assert "--replace" in shown.stdout
