"""Passwords, bearer tokens and API keys: `/auth/token`, `/auth/hash`, `/auth/keys`."""

from __future__ import annotations

import msgspec

DEFAULT_KEY_DAYS = 90


class TokenIn(msgspec.Struct, forbid_unknown_fields=True):
    """POST /auth/token body."""

    username: str
    password: str


class TokenOut(msgspec.Struct):
    """A bearer token and its lifetime."""

    token: str
    token_type: str
    expires_in: int


class HashIn(msgspec.Struct, forbid_unknown_fields=True):
    """POST /auth/hash body."""

    password: str


class HashOut(msgspec.Struct):
    """An argon2id PHC string for the credentials file."""

    password_hash: str


class WhoAmIOut(msgspec.Struct):
    """`GET /auth/whoami`: the account and token scope a request speaks for (`local` when auth is off)."""

    username: str
    user_id: str
    role: str
    scope: str
    auth_enabled: bool


class KeyIn(msgspec.Struct, forbid_unknown_fields=True):
    """`POST /auth/keys`: a name to recognise the key by, its scope, and its lifetime in days (null = never)."""

    name: str
    scope: str = "read"
    expires_days: int | None = DEFAULT_KEY_DAYS


class ApiKeyOut(msgspec.Struct):
    """One API key as listed: never the key itself nor its hash."""

    id: str
    name: str
    owner: str
    scope: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class NewApiKeyOut(ApiKeyOut):
    """`POST /auth/keys`: the new key's entry and, this once only, the key."""

    key: str


class ApiKeyListOut(msgspec.Struct):
    """`GET /auth/keys`, newest first."""

    keys: list[ApiKeyOut]
