"""Users in the credentials file (`[{"username", "password_hash", "role"?, "id"?, "token_generation"?}]`)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, cast

import anyio

from specai import auth
from specai.errors import ConflictError, CredentialsError, InvalidRequestError, NotFoundError
from specai.files import ensure_private_dir, write_private_json
from specai.users.access import ROLES, Role

log = logging.getLogger("specai.users")
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")


@dataclass(frozen=True)
class User:
    """One entry of the credentials file.

    `id` is what owns data and what tokens name: new users get a fresh one, so a later user of the same name never
    inherits anything; entries without one (the seed format) use their username. `token_generation` goes up to
    revoke every token issued before.
    """

    username: str
    password_hash: str
    role: Role = "user"
    id: str = ""
    token_generation: int = 0

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", self.username)

    @property
    def scheme(self) -> str:
        """`argon2id` for new hashes, `pbkdf2-legacy` for the original's format."""
        return (
            "argon2id"
            if self.password_hash.startswith("$argon2id")
            else ("argon2" if self.password_hash.startswith("$argon2") else "pbkdf2-legacy")
        )


def check_username(username: str) -> str:
    """Return the username when it is acceptable, else raise InvalidRequestError."""
    if not _USERNAME.fullmatch(username):
        raise InvalidRequestError(
            f"invalid username {username!r}: use 1-64 letters, digits or . _ @ + - (starting with a letter or digit)"
        )
    return username


def check_password(password: str) -> str:
    """Refuse empty passwords."""
    if not password:
        raise InvalidRequestError("the password must not be empty")
    return password


def check_password_length(password: str, minimum: int) -> str:
    """Refuse a new password shorter than `minimum` characters (`[auth] min_password_length`), never echoing it."""
    check_password(password)
    if len(password) < minimum:
        raise InvalidRequestError(
            f"the password is too short: use at least {minimum} characters ([auth] min_password_length)"
        )
    return password


def load_users(path: Path) -> list[User]:
    """Read and validate the credentials file; any problem is a CredentialsError naming the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CredentialsError(
            f"credentials file {path} does not exist; create a user with `specai auth add-user`"
        ) from None
    except OSError as exc:
        raise CredentialsError(f"cannot read credentials file {path}: {exc.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"credentials file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise CredentialsError(
            f"credentials file {path} must hold a JSON list of {{username, password_hash}}"
        )
    users = [_parse_entry(path, index, entry) for index, entry in enumerate(data)]
    for attribute in ("username", "id"):
        counts = Counter(getattr(user, attribute) for user in users)
        if dupes := sorted(value for value, count in counts.items() if count > 1):
            raise CredentialsError(f"credentials file {path}: {attribute} '{dupes[0]}' appears twice")
    if len(users) == 1 and not isinstance(data[0].get("role"), str):
        users = [replace(users[0], role="admin")]  # a lone user of a seed-format file administers the server
    return users


def _parse_entry(path: Path, index: int, entry: Any) -> User:
    """One validated entry; the optional fields are checked as strictly as the required ones."""
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("username"), str)
        or not isinstance(entry.get("password_hash"), str)
    ):
        raise CredentialsError(
            f"credentials file {path}: entry {index} needs string 'username' and 'password_hash'"
        )
    name = entry["username"]
    if not auth.is_valid_hash(entry["password_hash"]):
        raise CredentialsError(f"credentials file {path}: user '{name}' has an unrecognised hash")
    role = entry.get("role", "user")
    if role not in ROLES:
        raise CredentialsError(
            f"credentials file {path}: user '{name}' has role {role!r}; use one of {', '.join(ROLES)}"
        )
    user_id = entry.get("id", name)
    if not isinstance(user_id, str) or not _USERNAME.fullmatch(user_id):
        raise CredentialsError(f"credentials file {path}: user '{name}' has an invalid id {user_id!r}")
    generation = entry.get("token_generation", 0)
    if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
        raise CredentialsError(f"credentials file {path}: user '{name}' has an invalid token_generation")
    return User(name, entry["password_hash"], cast(Role, role), user_id, generation)


def check_role(role: str) -> Role:
    """Return the role when it is one of admin, user, mesh; else raise InvalidRequestError."""
    if role not in ROLES:
        raise InvalidRequestError(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
    return cast(Role, role)


def get_user(path: Path, username: str) -> User:
    """The named user, or NotFoundError with a hint."""
    return _find(load_users(path), username, path)


def _find(users: list[User], username: str, path: Path) -> User:
    for user in users:
        if user.username == username:
            return user
    raise NotFoundError(f"no user '{username}' in {path}; see `specai auth list-users`")


def add_user(path: Path, username: str, password: str, role: Role | None = None) -> User:
    """Add a user with an argon2id hash and a fresh id; refuse an existing name. The first user is an admin."""
    check_username(username)
    check_password(password)
    with _locked(path):
        users = load_users(path) if path.exists() else []
        if any(user.username == username for user in users):
            raise ConflictError(
                f"user '{username}' already exists in {path}; use `specai auth passwd {username}` to change the password"
            )
        chosen: Role = role or ("user" if users else "admin")
        user = User(username, auth.hash_password(password), chosen, f"u-{uuid.uuid4().hex}")
        _save(path, [*users, user])
    return user


def set_password(path: Path, username: str, password: str) -> User:
    """Replace a user's password hash and revoke every token issued before."""
    check_password(password)
    hashed = auth.hash_password(password)
    return _update(
        path, username, lambda u: replace(u, password_hash=hashed, token_generation=u.token_generation + 1)
    )


def set_role(path: Path, username: str, role: Role) -> User:
    """Change a user's role; tokens issued before are revoked, so none keeps the old role's powers."""
    return _update(path, username, lambda u: replace(u, role=role, token_generation=u.token_generation + 1))


def revoke_tokens(path: Path, username: str) -> User:
    """Revoke every token issued to the user so far (API keys are revoked one by one on the server)."""
    return _update(path, username, lambda u: replace(u, token_generation=u.token_generation + 1))


def _update(path: Path, username: str, change: Any) -> User:
    with _locked(path):
        users = load_users(path)
        updated: User = change(_find(users, username, path))
        _save(path, [updated if user.username == username else user for user in users])
    return updated


def replace_hash(path: Path, username: str, password_hash: str, *, expected: str | None = None) -> User:
    """Store a new hash for `username`; with `expected`, only if the stored hash is still that one."""
    with _locked(path):
        users = load_users(path)
        found = _find(users, username, path)
        if expected is not None and found.password_hash != expected:
            return found
        updated = replace(found, password_hash=password_hash)
        _save(path, [updated if user.username == username else user for user in users])
    return updated


def remove_user(path: Path, username: str) -> None:
    """Delete a user."""
    with _locked(path):
        users = load_users(path)
        _find(users, username, path)
        _save(path, [user for user in users if user.username != username])


@functools.cache
def dummy_hash() -> str:
    """A hash to check unknown users' passwords against, so that they cost as much as known ones."""
    return auth.hash_password("specai-timing-equaliser")


def _save(path: Path, users: list[User]) -> None:
    """Write every field explicitly, so a role implied by the seed format survives adding a second user."""
    write_private_json(
        path,
        [
            {
                "username": u.username,
                "password_hash": u.password_hash,
                "role": u.role,
                "id": u.id,
                "token_generation": u.token_generation,
            }
            for u in users
        ],
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of the credentials file across processes."""
    ensure_private_dir(path.parent)
    lock_path = path.with_name(f".{path.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class Directory(Protocol):
    """Where the server finds its users: the credentials file (`UserDirectory`) or, on PostgreSQL, the shared users
    table (`table.DatabaseDirectory`).

    Lookups run on every authenticated request: they must answer from memory, and hand back the same `User`
    object while nothing changed (callers cache what they derived from it by identity).
    """

    def __len__(self) -> int: ...

    def get(self, username: str) -> User | None:
        """The user of that name as it is now, or None."""
        ...

    def by_id(self, user_id: str) -> User | None:
        """The user with that id (ids are never reused), or None."""
        ...

    async def fetch(self, username: str) -> User | None:
        """The user of that name as its source says now (may read it: not for every request), or None."""
        ...

    async def login(self, username: str, password: str) -> User | None:
        """The user when the password is right (checked off the event loop), else None."""
        ...


class UserDirectory:
    """The server's view of the credentials file: loaded at start, re-read when it changes on disk.

    A file that disappears or breaks while the server runs means no users (fail closed), not the last good ones.
    """

    def __init__(self, path: Path, *, recheck_secs: float = 0.0) -> None:
        self.path = path
        self._fspath = os.fspath(path)
        self.recheck_secs = recheck_secs
        self.problem: str | None = None
        self._checked = 0.0
        self._stamp: tuple[int, int, int] | None = None
        self._load(load_users(path))
        self._stamp = self._stat()
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            stat = os.stat(self._fspath)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size, stat.st_ino

    def refresh(self, *, force: bool = False) -> None:
        """Re-read the file if it changed (checked at most every `recheck_secs` unless forced).

        With the default of 0 this is one `stat` per lookup: an edit by `specai auth` counts at once.
        """
        if self.recheck_secs:
            now = time.monotonic()
            if not force and now - self._checked < self.recheck_secs:
                return
            self._checked = now
        stamp = self._stat()
        if stamp is not None and stamp == self._stamp:
            return
        try:
            self._load(load_users(self.path))
            self.problem = None
        except CredentialsError as exc:
            self._load([])
            if exc.message != self.problem:
                log.error("%s; nobody can log in until it is fixed", exc.message)
            self.problem = exc.message
        self._stamp = stamp

    def _load(self, users: list[User]) -> None:
        self._users = {user.username: user for user in users}
        self._ids = {user.id: user for user in users}

    def __len__(self) -> int:
        return len(self._users)

    def exists(self, username: str) -> bool:
        """True when the user is (still) in the credentials file."""
        return self.get(username) is not None

    def get(self, username: str) -> User | None:
        """The user of that name as the file says now, or None."""
        if not self.recheck_secs or time.monotonic() - self._checked >= self.recheck_secs:
            self.refresh()
        return self._users.get(username)

    def by_id(self, user_id: str) -> User | None:
        """The user with that id (ids are never reused), or None."""
        if not self.recheck_secs or time.monotonic() - self._checked >= self.recheck_secs:
            self.refresh()
        return self._ids.get(user_id)

    async def fetch(self, username: str) -> User | None:
        """The user of that name as the file says now (read again if it changed), or None."""
        self.refresh(force=True)
        return self._users.get(username)

    async def login(self, username: str, password: str) -> User | None:
        """`authenticate` in a worker thread."""
        return await anyio.to_thread.run_sync(self.authenticate, username, password)

    def authenticate(self, username: str, password: str) -> User | None:
        """The user when the password is right (slow: run it in a thread); upgrades legacy or weak hashes."""
        self.refresh(force=True)
        user = self._users.get(username)
        if user is None:
            auth.verify_password(dummy_hash(), password)  # same cost as a real check
            return None
        if not auth.verify_password(user.password_hash, password):
            return None
        if auth.needs_rehash(user.password_hash):
            with contextlib.suppress(CredentialsError, NotFoundError, OSError):
                replace_hash(self.path, username, auth.hash_password(password), expected=user.password_hash)
        return user
