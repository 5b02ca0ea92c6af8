"""The credentials file: add, change, remove, validate, atomic writes, and login through UserDirectory."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import pytest

from specai import auth
from specai.errors import ConflictError, CredentialsError, InvalidRequestError, NotFoundError
from specai.users import directory as users
from specai.users.directory import UserDirectory

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def argon_hash() -> str:
    """One argon2id hash of PASSWORD, shared because hashing is slow."""
    return auth.hash_password(PASSWORD)


@pytest.fixture
def creds(tmp_path: Path, argon_hash: str) -> Path:
    """A credentials file holding alice and bob (both with PASSWORD)."""
    path = tmp_path / "credentials.json"
    write_entries(path, [("alice", argon_hash), ("bob", argon_hash)])
    return path


def write_entries(path: Path, entries: list[tuple[str, str]]) -> None:
    path.write_text(json.dumps([{"username": u, "password_hash": h} for u, h in entries], indent=2))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftover_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- add / change / remove ------------------------------------------------------------------------------------


def test_add_user_writes_private_file_in_seed_format_plus_role_id_and_generation(tmp_path: Path) -> None:
    path = tmp_path / "private" / "credentials.json"
    user = users.add_user(path, "alice", PASSWORD)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    data = json.loads(path.read_text())
    assert data == [
        {
            "username": "alice",
            "password_hash": user.password_hash,
            "role": "admin",
            "id": user.id,
            "token_generation": 0,
        }
    ]
    assert re.fullmatch(r"u-[0-9a-f]{32}", user.id)
    assert user.role == "admin"  # the first user administers the server
    assert user.username == "alice"
    assert user.password_hash.startswith("$argon2id$")
    assert user.scheme == "argon2id"
    assert auth.verify_password(user.password_hash, PASSWORD)
    assert leftover_temp_files(path.parent) == []


def test_add_user_keeps_existing_users(creds: Path, argon_hash: str) -> None:
    users.add_user(creds, "carol", "pw3")
    listed = users.load_users(creds)
    assert [u.username for u in listed] == ["alice", "bob", "carol"]
    assert listed[0].password_hash == argon_hash
    assert mode(creds) == 0o600


def test_add_existing_user_is_a_conflict_pointing_to_passwd(creds: Path) -> None:
    before = creds.read_text()
    with pytest.raises(ConflictError) as info:
        users.add_user(creds, "alice", "other")
    assert "already exists" in info.value.message
    assert "specai auth passwd alice" in info.value.message
    assert info.value.code == "conflict"
    assert creds.read_text() == before


def test_set_password_replaces_only_that_users_hash(creds: Path, argon_hash: str) -> None:
    updated = users.set_password(creds, "alice", "new password")
    assert updated.password_hash != argon_hash
    assert updated.password_hash.startswith("$argon2id$")
    assert users.get_user(creds, "alice") == updated
    assert users.get_user(creds, "bob").password_hash == argon_hash
    assert auth.verify_password(updated.password_hash, "new password")
    assert mode(creds) == 0o600


def test_set_password_for_unknown_user_is_not_found(creds: Path) -> None:
    before = creds.read_text()
    with pytest.raises(NotFoundError) as info:
        users.set_password(creds, "mallory", "pw")
    assert "no user 'mallory'" in info.value.message
    assert str(creds) in info.value.message
    assert "specai auth list-users" in info.value.message
    assert creds.read_text() == before


def test_remove_user_deletes_only_that_user(creds: Path) -> None:
    users.remove_user(creds, "alice")
    assert [u.username for u in users.load_users(creds)] == ["bob"]
    assert mode(creds) == 0o600


def test_remove_unknown_user_is_not_found(creds: Path) -> None:
    before = creds.read_text()
    with pytest.raises(NotFoundError, match="no user 'mallory'") as info:
        users.remove_user(creds, "mallory")
    assert info.value.code == "not_found"
    assert creds.read_text() == before


def test_get_user_returns_the_user_or_not_found(creds: Path, argon_hash: str) -> None:
    assert users.get_user(creds, "bob") == users.User("bob", argon_hash)
    with pytest.raises(NotFoundError) as info:
        users.get_user(creds, "Bob")
    assert info.value.message == f"no user 'Bob' in {creds}; see `specai auth list-users`"


@pytest.mark.parametrize("username", ["", " alice", "a b", "-alice", ".alice", "al/ice", "a" * 65, "alice\n"])
def test_add_user_rejects_invalid_username(tmp_path: Path, username: str) -> None:
    path = tmp_path / "credentials.json"
    with pytest.raises(InvalidRequestError) as info:
        users.add_user(path, username, "pw")
    assert f"invalid username {username!r}" in info.value.message
    assert info.value.code == "invalid_request"
    assert not path.exists()


@pytest.mark.parametrize("username", ["a", "alice", "Alice.Smith", "a_b-c+d@example.com", "7" * 64])
def test_check_username_accepts_valid_names(username: str) -> None:
    assert users.check_username(username) == username


def test_empty_password_is_rejected(tmp_path: Path, creds: Path) -> None:
    path = tmp_path / "new.json"
    with pytest.raises(InvalidRequestError, match="the password must not be empty"):
        users.add_user(path, "carol", "")
    assert not path.exists()
    before = creds.read_text()
    with pytest.raises(InvalidRequestError, match="the password must not be empty"):
        users.set_password(creds, "alice", "")
    assert creds.read_text() == before


# --- loading --------------------------------------------------------------------------------------------------


def test_load_users_reads_the_seed_format(creds: Path, argon_hash: str) -> None:
    assert users.load_users(creds) == [users.User("alice", argon_hash), users.User("bob", argon_hash)]


def test_load_users_accepts_legacy_hashes(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    legacy = auth.legacy_hash("pw")
    write_entries(path, [("old", legacy)])
    (user,) = users.load_users(path)
    assert user == users.User("old", legacy, role="admin")  # a lone user without a role is the admin
    assert user.id == "old"  # the seed format has no ids: the name is the id
    assert user.scheme == "pbkdf2-legacy"


def test_load_users_missing_file_names_it_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "missing.json"
    with pytest.raises(CredentialsError) as info:
        users.load_users(path)
    assert str(path) in info.value.message
    assert "does not exist" in info.value.message
    assert "specai auth add-user" in info.value.message
    assert info.value.code == "credentials_error"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "is not valid JSON"),
        ("", "is not valid JSON"),
        ('{"alice": "x"}', "must hold a JSON list"),
        ('"alice"', "must hold a JSON list"),
        ('["alice"]', "entry 0 needs string 'username' and 'password_hash'"),
        ('[{"username": "alice"}]', "entry 0 needs string 'username' and 'password_hash'"),
        ('[{"username": 1, "password_hash": "x"}]', "entry 0 needs string 'username' and 'password_hash'"),
        ('[{"username": "alice", "password_hash": "plaintext"}]', "user 'alice' has an unrecognised hash"),
        (
            '[{"username": "alice", "password_hash": "$argon2id$broken"}]',
            "user 'alice' has an unrecognised hash",
        ),
    ],
)
def test_load_users_bad_file_is_a_credentials_error_naming_it(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(text)
    with pytest.raises(CredentialsError) as info:
        users.load_users(path)
    assert str(path) in info.value.message
    assert problem in info.value.message


def test_load_users_rejects_duplicate_names(tmp_path: Path, argon_hash: str) -> None:
    path = tmp_path / "credentials.json"
    write_entries(path, [("alice", argon_hash), ("alice", argon_hash)])
    with pytest.raises(CredentialsError, match="username 'alice' appears twice") as info:
        users.load_users(path)
    assert str(path) in info.value.message


def test_changing_a_broken_file_refuses_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text("{broken")
    with pytest.raises(CredentialsError, match="is not valid JSON"):
        users.remove_user(path, "alice")
    with pytest.raises(CredentialsError, match="is not valid JSON"):
        users.add_user(path, "alice", "pw")
    assert path.read_text() == "{broken"


# --- atomic writes --------------------------------------------------------------------------------------------


def test_failed_write_leaves_the_old_file_intact(creds: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = creds.read_text()

    def broken_replace(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space left on device"):
        users.remove_user(creds, "alice")
    monkeypatch.undo()

    assert creds.read_text() == before
    assert leftover_temp_files(creds.parent) == []
    assert [u.username for u in users.load_users(creds)] == ["alice", "bob"]


def test_failed_write_during_add_leaves_the_old_file_intact(
    creds: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = creds.read_text()

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        users.add_user(creds, "carol", "pw")
    monkeypatch.undo()

    assert creds.read_text() == before
    assert leftover_temp_files(creds.parent) == []


# --- UserDirectory --------------------------------------------------------------------------------------------


def test_authenticate_accepts_right_and_rejects_wrong_or_unknown(creds: Path, argon_hash: str) -> None:
    directory = UserDirectory(creds, recheck_secs=0)
    assert len(directory) == 2
    assert directory.authenticate("alice", PASSWORD) is not None
    assert directory.authenticate("alice", "wrong") is None
    assert directory.authenticate("mallory", PASSWORD) is None
    assert users.get_user(creds, "alice").password_hash == argon_hash  # a current hash is not rewritten


def test_authenticate_upgrades_legacy_hash_on_success(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    legacy = auth.legacy_hash("old secret")
    write_entries(path, [("old", legacy)])
    directory = UserDirectory(path)

    assert directory.authenticate("old", "not it") is None
    assert users.get_user(path, "old").password_hash == legacy  # a failed login changes nothing

    assert directory.authenticate("old", "old secret") is not None
    upgraded = users.get_user(path, "old")
    assert upgraded.scheme == "argon2id"
    assert upgraded.password_hash.startswith("$argon2id$")
    assert mode(path) == 0o600
    assert directory.authenticate("old", "old secret") is not None  # the new hash works on the next login


def test_authenticate_picks_up_users_added_after_construction(creds: Path, argon_hash: str) -> None:
    directory = UserDirectory(creds, recheck_secs=0)
    assert directory.exists("carol") is False
    write_entries(creds, [("alice", argon_hash), ("bob", argon_hash), ("carol", argon_hash)])
    assert directory.exists("carol") is True
    assert directory.authenticate("carol", PASSWORD) is not None
    assert len(directory) == 3


def test_authenticate_sees_removed_users_gone(creds: Path) -> None:
    directory = UserDirectory(creds, recheck_secs=0)
    users.remove_user(creds, "bob")
    assert directory.exists("bob") is False
    assert directory.exists("alice") is True


def test_directory_fails_closed_when_file_breaks(creds: Path) -> None:
    directory = UserDirectory(creds, recheck_secs=0)
    creds.write_text("{broken")
    assert directory.exists("alice") is False
    assert len(directory) == 0
    assert directory.problem is not None
    assert "not valid JSON" in directory.problem


def test_directory_fails_closed_when_file_is_deleted(creds: Path) -> None:
    directory = UserDirectory(creds, recheck_secs=0)
    creds.unlink()
    assert directory.exists("alice") is False
    assert directory.authenticate("alice", "whatever") is None


def test_directory_on_missing_file_is_a_credentials_error(tmp_path: Path) -> None:
    path = tmp_path / "missing.json"
    with pytest.raises(CredentialsError, match="does not exist") as info:
        UserDirectory(path)
    assert str(path) in info.value.message


# --- roles, ids and token generations ----------------------------------------------------------------------


def test_first_user_is_admin_later_ones_users_unless_a_role_is_given(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    assert users.add_user(path, "root", PASSWORD).role == "admin"
    assert users.add_user(path, "alice", PASSWORD).role == "user"
    assert users.add_user(path, "mesh", PASSWORD, role="mesh").role == "mesh"
    assert [(u.username, u.role) for u in users.load_users(path)] == [
        ("root", "admin"),
        ("alice", "user"),
        ("mesh", "mesh"),
    ]


def test_seed_file_with_one_user_keeps_it_admin_after_a_second_is_added(
    tmp_path: Path, argon_hash: str
) -> None:
    path = tmp_path / "credentials.json"
    write_entries(path, [("alice", argon_hash)])
    users.add_user(path, "bob", PASSWORD)
    loaded = {u.username: u for u in users.load_users(path)}
    assert (loaded["alice"].role, loaded["alice"].id) == ("admin", "alice")  # written out explicitly
    assert loaded["bob"].role == "user"


def test_seed_file_with_two_users_and_no_roles_makes_both_users(creds: Path) -> None:
    assert [u.role for u in users.load_users(creds)] == ["user", "user"]


def test_a_new_user_of_a_removed_name_gets_a_new_id(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    users.add_user(path, "admin", PASSWORD)
    first = users.add_user(path, "frank", PASSWORD)
    users.remove_user(path, "frank")
    second = users.add_user(path, "frank", PASSWORD)
    assert first.id != second.id


def test_passwd_set_role_and_revoke_raise_the_token_generation(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    users.add_user(path, "admin", PASSWORD)
    alice = users.add_user(path, "alice", PASSWORD)
    assert users.set_password(path, "alice", "new one").token_generation == 1
    assert users.revoke_tokens(path, "alice").token_generation == 2
    changed = users.set_role(path, "alice", "mesh")
    assert (changed.role, changed.token_generation, changed.id) == ("mesh", 3, alice.id)
    with pytest.raises(NotFoundError):
        users.revoke_tokens(path, "nobody")


def test_check_role_refuses_unknown_roles() -> None:
    assert users.check_role("mesh") == "mesh"
    with pytest.raises(InvalidRequestError, match="admin, user, mesh"):
        users.check_role("root")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("role", "root", "has role 'root'"),
        ("role", 3, "has role 3"),
        ("id", "", "invalid id"),
        ("id", 5, "invalid id"),
        ("token_generation", -1, "invalid token_generation"),
        ("token_generation", "1", "invalid token_generation"),
        ("token_generation", True, "invalid token_generation"),
    ],
)
def test_load_users_rejects_bad_optional_fields(
    tmp_path: Path, argon_hash: str, field: str, value: object, message: str
) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(json.dumps([{"username": "alice", "password_hash": argon_hash, field: value}]))
    with pytest.raises(CredentialsError, match=message):
        users.load_users(path)


def test_load_users_rejects_duplicate_ids(tmp_path: Path, argon_hash: str) -> None:
    path = tmp_path / "credentials.json"
    entries = [{"username": n, "password_hash": argon_hash, "id": "same"} for n in ("a", "b")]
    path.write_text(json.dumps(entries))
    with pytest.raises(CredentialsError, match="id 'same' appears twice"):
        users.load_users(path)


def test_directory_finds_users_by_name_and_id(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    users.add_user(path, "admin", PASSWORD)
    alice = users.add_user(path, "alice", PASSWORD)
    directory = UserDirectory(path)
    assert directory.get("alice") == alice
    assert directory.by_id(alice.id) == alice
    assert directory.by_id("alice") is None  # the name is not the id of a user added by the CLI
    users.remove_user(path, "alice")
    assert directory.by_id(alice.id) is None


# --- minimum password length ([auth] min_password_length), through the CLI --------------------------------------


def cli(home: Path, *args: str, password: str, config: str = "") -> tuple[int, str, str]:
    """Run `specai ARGS --password-stdin` in process with `password` on stdin and an isolated home and config."""
    from typer.testing import CliRunner

    from specai.cli import app

    config_path = home / "spec-ai.config.toml"
    config_path.write_text(config)
    env = {"SPECAI_HOME": str(home), "SPECAI_CONFIG": str(config_path), "NO_COLOR": "1"}
    result = CliRunner().invoke(app, [*args, "--password-stdin"], input=password + "\n", env=env)
    return result.exit_code, result.stdout, result.stderr


def test_add_user_refuses_a_password_shorter_than_8_by_default(tmp_path: Path) -> None:
    code, stdout, stderr = cli(tmp_path, "auth", "add-user", "alice", password="seven77")
    assert code == 2, stderr
    assert stderr.strip() == (
        "error: the password is too short: use at least 8 characters ([auth] min_password_length)"
    )
    assert "seven77" not in stdout + stderr
    assert not (tmp_path / "credentials.json").exists()
    code, _, stderr = cli(tmp_path, "auth", "add-user", "alice", password="eight888")
    assert code == 0, stderr
    assert [u.username for u in users.load_users(tmp_path / "credentials.json")] == ["alice"]


def test_passwd_refuses_a_short_password_and_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    users.add_user(path, "alice", PASSWORD)
    before = path.read_text()
    code, stdout, stderr = cli(
        tmp_path,
        "auth",
        "passwd",
        "alice",
        password="elevenchars",
        config="[auth]\nmin_password_length = 12\n",
    )
    assert code == 2, stderr
    assert "use at least 12 characters" in stderr
    assert "elevenchars" not in stdout + stderr
    assert path.read_text() == before
    code, _, stderr = cli(tmp_path, "auth", "passwd", "alice", password="twelve-chars")
    assert code == 0, stderr  # the default minimum, 8, again


def test_auth_hash_applies_the_minimum_too(tmp_path: Path) -> None:
    code, stdout, stderr = cli(
        tmp_path, "auth", "hash", password="short", config="[auth]\nmin_password_length = 6\n"
    )
    assert code == 2, stderr
    assert stdout == ""
    code, stdout, _ = cli(
        tmp_path, "auth", "hash", password="sixsix", config="[auth]\nmin_password_length = 6\n"
    )
    assert code == 0
    assert stdout.startswith("$argon2id$")


def test_check_password_length_counts_characters_not_bytes() -> None:
    assert users.check_password_length("ééééé", 5) == "ééééé"
    with pytest.raises(InvalidRequestError, match="at least 6 characters"):
        users.check_password_length("ééééé", 6)
