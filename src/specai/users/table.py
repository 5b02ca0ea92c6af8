"""Users in the shared database (`[database] url` on PostgreSQL), so that every server on it knows the same accounts.

The functions mirror the credentials file's (`directory.add_user`, `set_password`, ...): each is one transaction
that also moves the "users" change counter, which makes every process reload its `DatabaseDirectory` (at once on
PostgreSQL through NOTIFY, within `versions.POLL_SECS` anyway). Password hashes are made before the transaction
opens, so no lock is held while argon2 runs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

import anyio
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from specai import auth
from specai.errors import ConflictError, CredentialsError, NotFoundError
from specai.store import Store
from specai.store import versions as counters
from specai.store.schema import users
from specai.store.types import utcnow
from specai.users.access import Role
from specai.users.directory import User, check_password, check_username, dummy_hash

USERS = "users"  # the change counter every write here moves
log = logging.getLogger("specai.users")


@dataclass(frozen=True)
class Imported:
    """What `import_users` did, by username (in the file's order)."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _user(row: Any) -> User:
    return User(row.username, row.password_hash, cast(Role, row.role), row.id, row.token_generation)


def no_users_message() -> str:
    """What a server with auth on says when the users table is empty."""
    return (
        "auth is enabled but the database has no users; add one with `specai auth add-user` "
        "or load a credentials file with `specai auth import FILE`"
    )


async def list_users(store: Store) -> list[User]:
    """Every user, oldest first."""
    async with store.connect() as conn:
        rows = await conn.execute(select(users).order_by(users.c.created_at, users.c.username))
        return [_user(row) for row in rows]


async def count_users(store: Store) -> int:
    """How many users there are (a server with auth on refuses to start on none: see `require_users`)."""
    async with store.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(users)) or 0)


async def require_users(store: Store) -> None:
    """Raise CredentialsError (the server refuses to start) when the users table is empty."""
    if not await count_users(store):
        raise CredentialsError(no_users_message())


async def get_user(store: Store, username: str) -> User:
    """The named user, or NotFoundError with a hint."""
    async with store.connect() as conn:
        return await _find(conn, username)


async def _find(conn: AsyncConnection, username: str) -> User:
    row = (await conn.execute(select(users).where(users.c.username == username))).first()
    if row is None:
        raise NotFoundError(f"no user '{username}' in the database; see `specai auth list-users`")
    return _user(row)


async def add_user(store: Store, username: str, password: str, role: Role | None = None) -> User:
    """Add a user with an argon2id hash and a fresh id; refuse an existing name. The first user is an admin."""
    check_username(username)
    check_password(password)
    hashed = await anyio.to_thread.run_sync(auth.hash_password, password)
    now = utcnow()
    try:
        async with store.transaction() as conn:
            await counters.bump(conn, USERS)  # first: it locks the counter row, so concurrent adds take turns
            if await _exists(conn, username):
                raise _taken(username)
            chosen: Role = role or ("user" if await conn.scalar(select(users.c.id).limit(1)) else "admin")
            user = User(username, hashed, chosen, f"u-{uuid.uuid4().hex}")
            await conn.execute(insert(users).values(**_values(user), created_at=now, updated_at=now))
    except IntegrityError:
        raise _taken(username) from None
    return user


def _taken(username: str) -> ConflictError:
    return ConflictError(
        f"user '{username}' already exists in the database; "
        f"use `specai auth passwd {username}` to change the password"
    )


async def _exists(conn: AsyncConnection, username: str) -> bool:
    return await conn.scalar(select(users.c.id).where(users.c.username == username)) is not None


def _values(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "password_hash": user.password_hash,
        "role": user.role,
        "token_generation": user.token_generation,
    }


async def set_password(store: Store, username: str, password: str) -> User:
    """Replace a user's password hash and revoke every token issued before."""
    check_password(password)
    hashed = await anyio.to_thread.run_sync(auth.hash_password, password)
    return await _update(
        store, username, lambda u: replace(u, password_hash=hashed, token_generation=u.token_generation + 1)
    )


async def set_role(store: Store, username: str, role: Role) -> User:
    """Change a user's role; tokens issued before are revoked, so none keeps the old role's powers."""
    return await _update(
        store, username, lambda u: replace(u, role=role, token_generation=u.token_generation + 1)
    )


async def revoke_tokens(store: Store, username: str) -> User:
    """Revoke every token issued to the user so far (API keys are revoked one by one on the server)."""
    return await _update(store, username, lambda u: replace(u, token_generation=u.token_generation + 1))


async def _update(store: Store, username: str, change: Callable[[User], User]) -> User:
    async with store.transaction() as conn:
        await counters.bump(conn, USERS)
        updated = change(await _find(conn, username))
        await conn.execute(
            update(users).where(users.c.id == updated.id).values(**_values(updated), updated_at=utcnow())
        )
    return updated


async def replace_hash(
    store: Store, username: str, password_hash: str, *, expected: str | None = None
) -> User:
    """Store a new hash for `username` (tokens stay valid); with `expected`, only if the stored hash is still that
    one (a password changed meanwhile wins over a login's upgrade of the old one)."""
    async with store.transaction() as conn:
        condition = users.c.username == username
        if expected is not None:
            condition &= users.c.password_hash == expected
        done = await conn.execute(
            update(users).where(condition).values(password_hash=password_hash, updated_at=utcnow())
        )
        if done.rowcount:
            await counters.bump(conn, USERS)
        return await _find(conn, username)


async def remove_user(store: Store, username: str) -> None:
    """Delete a user; their tokens and keys stop working everywhere once the servers reload."""
    async with store.transaction() as conn:
        await counters.bump(conn, USERS)
        gone = await conn.execute(delete(users).where(users.c.username == username))
        if not gone.rowcount:
            await _find(conn, username)  # raises NotFoundError (and rolls the counter back)


async def import_users(store: Store, entries: Sequence[User], *, replace_existing: bool = False) -> Imported:
    """Load users (validated by `directory.load_users`) in one transaction, keeping their ids, so tokens and data of
    a server that used the file keep working. A name already in the database is skipped, or with
    `replace_existing` takes the file's hash and role under its database id, its token generation raised past both
    (every token issued before is revoked). An id another name already has refuses the whole import."""
    done = Imported()
    now = utcnow()
    async with store.transaction() as conn:
        await counters.bump(conn, USERS)
        present = {row.username: _user(row) for row in await conn.execute(select(users))}
        owners = {user.id: user.username for user in present.values()}
        for entry in entries:
            found = present.get(entry.username)
            if found is None:
                if (holder := owners.get(entry.id)) is not None:
                    raise ConflictError(
                        f"user '{entry.username}' has id '{entry.id}', which user '{holder}' in the database "
                        "already has; remove one of them first (nothing was imported)"
                    )
                await conn.execute(insert(users).values(**_values(entry), created_at=now, updated_at=now))
                owners[entry.id] = entry.username
                done.added.append(entry.username)
            elif replace_existing:
                generation = max(found.token_generation + 1, entry.token_generation)
                await conn.execute(
                    update(users)
                    .where(users.c.id == found.id)
                    .values(
                        password_hash=entry.password_hash,
                        role=entry.role,
                        token_generation=generation,
                        updated_at=now,
                    )
                )
                done.replaced.append(entry.username)
            else:
                done.skipped.append(entry.username)
    return done


class DatabaseDirectory:
    """The server's view of the users table: an in-memory snapshot, loaded at start and whenever the "users"
    counter moves (`reload`), so lookups, which run on every request, never query the database.

    A reload keeps the very `User` object of every user that did not change (the token cache compares them by
    identity). A login reads its user afresh first, so an account added or changed on another server a moment ago
    already counts; so does a token issued so recently that it may name a change not loaded here yet (`fetch`).
    """

    def __init__(self) -> None:
        self._store: Store | None = None
        self._users: dict[str, User] = {}
        self._ids: dict[str, User] = {}
        self._lock: asyncio.Lock | None = None

    async def open(self, store: Store) -> None:
        """Bind to the open store and load every user (at start); no users at all is a CredentialsError."""
        self._store, self._lock = store, asyncio.Lock()
        await self.reload()
        if not self._users:
            raise CredentialsError(no_users_message())

    def _bound(self) -> tuple[Store, asyncio.Lock]:
        if self._store is None or self._lock is None:
            raise RuntimeError("the user directory is not open yet")
        return self._store, self._lock

    async def reload(self) -> None:
        """Read every user again; unchanged ones keep their objects. Reads and installs take turns with `fetch`, so
        an older read never replaces a newer one."""
        store, lock = self._bound()
        async with lock:
            async with store.connect() as conn:
                fresh = [_user(row) for row in await conn.execute(select(users))]
            ids: dict[str, User] = {}
            for user in fresh:
                known = self._ids.get(user.id)
                ids[user.id] = known if known == user else user
            self._ids, self._users = ids, {user.username: user for user in ids.values()}

    async def fetch(self, username: str) -> User | None:
        """The user of that name as the database says now (one read), also updating the snapshot."""
        store, lock = self._bound()
        async with lock:
            async with store.connect() as conn:
                row = (await conn.execute(select(users).where(users.c.username == username))).first()
            return self._put(username, None if row is None else _user(row))

    def _put(self, username: str, fresh: User | None) -> User | None:
        known = self._users.get(username)
        if known is not None and known == fresh:
            return known
        names, ids = dict(self._users), dict(self._ids)
        if known is not None:
            del names[username], ids[known.id]
        if fresh is not None:
            if (other := ids.get(fresh.id)) is not None:
                names.pop(other.username, None)
            names[username] = ids[fresh.id] = fresh
        self._users, self._ids = names, ids
        return fresh

    def __len__(self) -> int:
        return len(self._users)

    def get(self, username: str) -> User | None:
        """The user of that name as last loaded, or None."""
        return self._users.get(username)

    def by_id(self, user_id: str) -> User | None:
        """The user with that id (ids are never reused), or None."""
        return self._ids.get(user_id)

    async def login(self, username: str, password: str) -> User | None:
        """The user when the password is right, checked against the row as it is now (argon2 in a thread); a legacy
        or weak hash is upgraded in the database, unless the password changed meanwhile."""
        store, _ = self._bound()
        user = await self.fetch(username)
        if user is None:
            await anyio.to_thread.run_sync(auth.verify_password, dummy_hash(), password)  # same cost
            return None
        if not await anyio.to_thread.run_sync(auth.verify_password, user.password_hash, password):
            return None
        if auth.needs_rehash(user.password_hash):
            upgraded = await anyio.to_thread.run_sync(auth.hash_password, password)
            try:
                await replace_hash(store, username, upgraded, expected=user.password_hash)
            except NotFoundError:
                pass  # removed meanwhile: this login still stands, as it would a moment earlier
            except SQLAlchemyError:
                log.warning(
                    "could not store the upgraded password hash of '%s'; retried at the next login", username
                )
        return user
