"""What makes a bearer token stop working before it expires: API keys (stored hashed) and revoked token ids."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any, Protocol, cast

from sqlalchemy import delete, func, insert, select, update

from specai.errors import InvalidRequestError, NotFoundError, QuotaExceededError
from specai.store import Store, versions
from specai.store.engine import insert_ignore
from specai.store.schema import api_keys, revoked_tokens
from specai.store.types import utcnow
from specai.users.access import SCOPES, Principal, Scope, check_scope_for_role

KEY_PREFIX = "spk_"
MAX_KEYS_PER_ACCOUNT = 100
MAX_KEY_DAYS = 3650
_KEY = re.compile(r"^spk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
KEYS, REVOCATIONS = "keys", "revocations"  # the change counters of revoked keys and revoked token ids


@dataclass(frozen=True)
class ApiKey:
    """A long-lived key for a program: only its hash is stored; its scope is at most its account's role."""

    id: str
    owner_id: str
    owner_name: str
    name: str
    scope: Scope
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None

    def usable(self, now: dt.datetime) -> bool:
        """Neither revoked nor expired."""
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def as_dict(self) -> dict[str, Any]:
        """`{id, name, owner, scope, created_at, expires_at, revoked_at}` (never the key or its hash)."""
        stamp = lambda value: value.isoformat() if value else None  # noqa: E731
        return {
            "id": self.id,
            "name": self.name,
            "owner": self.owner_name,
            "scope": self.scope,
            "created_at": stamp(self.created_at),
            "expires_at": stamp(self.expires_at),
            "revoked_at": stamp(self.revoked_at),
        }


def is_api_key(token: str) -> bool:
    """True when a bearer token is shaped like an API key (not a JWT)."""
    return token.startswith(KEY_PREFIX)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()  # keys carry 256 random bits: no slow hash needed


def check_key_request(name: Any, scope: Any, expires_days: Any) -> tuple[str, Scope, int | None]:
    """Validate `POST /auth/keys` fields: a printable name, a known scope, days in 1..3650 or null (never)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequestError("name must be 1-64 printable characters")
    if scope not in SCOPES:
        raise InvalidRequestError(f"scope must be one of {', '.join(SCOPES)}")
    if expires_days is not None and (
        isinstance(expires_days, bool)
        or not isinstance(expires_days, int)
        or not 1 <= expires_days <= MAX_KEY_DAYS
    ):
        raise InvalidRequestError(
            f"expires_days must be 1-{MAX_KEY_DAYS}, or null for a key that never expires"
        )
    return name, cast(Scope, scope), expires_days


class ApiKeyStore:
    """API keys in the database, owned by the user id that created them."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def create(
        self, owner: Principal, name: str, scope: Scope, expires_days: int | None
    ) -> tuple[ApiKey, str]:
        """Store a new key's hash; return the key record and the key itself (shown once)."""
        check_scope_for_role(scope, owner.role)
        key_id = secrets.token_hex(8)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        expires = now + dt.timedelta(days=expires_days) if expires_days else None
        async with self.store.transaction() as conn:
            count = await conn.scalar(
                select(func.count())
                .select_from(api_keys)
                .where(api_keys.c.owner_id == owner.user_id, api_keys.c.revoked_at.is_(None))
            )
            if (count or 0) >= MAX_KEYS_PER_ACCOUNT:
                raise QuotaExceededError(
                    f"an account may hold at most {MAX_KEYS_PER_ACCOUNT} keys; revoke some first"
                )
            await conn.execute(
                insert(api_keys).values(
                    id=key_id,
                    owner_id=owner.user_id,
                    owner_name=owner.name,
                    name=name,
                    key_hash=_digest(key),
                    scope=scope,
                    created_at=now,
                    expires_at=expires,
                )
            )
        return ApiKey(key_id, owner.user_id, owner.name, name, scope, now, expires, None), key

    async def list(self, owner_id: str | None) -> list[ApiKey]:
        """The owner's keys (every key for None: an admin), newest first."""
        query = select(api_keys).order_by(api_keys.c.created_at.desc())
        if owner_id is not None:
            query = query.where(api_keys.c.owner_id == owner_id)
        async with self.store.engine.connect() as conn:
            return [_key(row) for row in await conn.execute(query)]

    async def revoke(self, key_id: str, owner_id: str | None) -> ApiKey:
        """Revoke the owner's key (any key for None); NotFoundError when it is missing or someone else's.

        Moves the "keys" counter: every process sharing the database then drops the API keys it had verified."""
        condition = api_keys.c.id == key_id
        if owner_id is not None:
            condition = condition & (api_keys.c.owner_id == owner_id)
        async with self.store.transaction() as conn:
            done = await conn.execute(
                update(api_keys).where(condition, api_keys.c.revoked_at.is_(None)).values(revoked_at=utcnow())
            )
            if done.rowcount:  # every process sharing the database forgets the keys it verified
                await versions.bump(conn, KEYS)
            row = (await conn.execute(select(api_keys).where(condition))).first()
        if row is None:
            raise NotFoundError(f"no key '{key_id}'; see `specai auth token list`")
        return _key(row)

    async def verify(self, key: str) -> ApiKey | None:
        """The usable key record for a presented key, or None."""
        match = _KEY.fullmatch(key)
        if match is None:
            return None
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == match.group(1)))).first()
        if row is None or not hmac.compare_digest(row.key_hash, _digest(key)):
            return None
        found = _key(row)
        return found if found.usable(utcnow()) else None


def _key(row: Any) -> ApiKey:
    return ApiKey(
        row.id,
        row.owner_id,
        row.owner_name,
        row.name,
        row.scope,
        row.created_at,
        row.expires_at,
        row.revoked_at,
    )


class RevocationList(Protocol):
    """Token ids revoked before they expire (`specai logout`); in-process today, shared on PostgreSQL later."""

    def is_revoked(self, jti: str) -> bool: ...

    async def revoke(self, jti: str, owner_id: str, expires_at: dt.datetime) -> None: ...


class StoredRevocations:
    """Revoked token ids kept in the database and mirrored in memory for the hot path; each revocation moves the
    "revocations" counter, so every process sharing the database reloads its mirror (`reload`)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._revoked: set[str] = set()

    async def load(self) -> None:
        """Forget expired entries, then read the rest (at start)."""
        now = utcnow()
        async with self.store.transaction() as conn:
            await conn.execute(delete(revoked_tokens).where(revoked_tokens.c.expires_at < now))
            self._revoked = set((await conn.scalars(select(revoked_tokens.c.jti))).all())

    async def reload(self) -> None:
        """Add the ids other processes revoked since (a union: an id revoked here meanwhile is never lost)."""
        async with self.store.connect() as conn:
            revoked = set((await conn.scalars(select(revoked_tokens.c.jti))).all())
        self._revoked |= revoked

    def is_revoked(self, jti: str) -> bool:
        """True when the token id was revoked."""
        return jti in self._revoked

    async def revoke(self, jti: str, owner_id: str, expires_at: dt.datetime) -> None:
        """Revoke one token id until it would have expired anyway."""
        async with self.store.transaction() as conn:
            await conn.execute(
                insert_ignore(conn, revoked_tokens, "jti").values(
                    jti=jti, owner_id=owner_id, expires_at=expires_at
                )
            )
            await versions.bump(conn, REVOCATIONS)
        self._revoked.add(jti)
