"""Bearer-token authentication for every route not marked `exclude_from_auth`, with a cache of verified tokens."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import HTTPScope, Scope

from specai import auth
from specai.errors import ForbiddenError, TokenError
from specai.mesh.peer_token import looks_like_peer_token
from specai.users.access import LOCAL, SCOPES, Principal, max_scope
from specai.users.directory import Directory, User
from specai.users.keys import ApiKey, ApiKeyStore, RevocationList, is_api_key

_CACHE_SIZE = 4096
_READ_METHODS = ("GET", "HEAD")
LOGOUT_PATH = "/auth/logout"  # any token may revoke itself
MESH_PATHS = ("/registry/", "/messages/", "/sync/")  # where peer tokens are accepted
_EXPIRED = "token expired; run `specai login` again"
_BAD_KEY = "invalid, expired or revoked API key"
# A token this recent that names a user change our directory has not loaded (another process made it, and this
# one's reload is a few milliseconds away) is checked against the source once, instead of refused.
FRESH_SECS = 5.0


@dataclass(slots=True)
class Verified:
    """A token checked once (signature or database): later requests re-check only in memory.

    `user` is the account as the directory gave it when `principal` was derived; while the directory hands back
    that same object, the principal still holds.
    """

    expires: float  # epoch seconds; infinite for a key that never expires
    claims: auth.TokenClaims | None = None  # a JWT's
    key: ApiKey | None = None  # an API key's
    user: User | None = None
    principal: Principal | None = None


class TokenCache(Protocol):
    """Verified tokens by their raw text: in-process today; any backend must forget a revoked key at once."""

    def get(self, token: str) -> Verified | None: ...

    def put(self, token: str, verified: Verified) -> None: ...

    def discard(self, token: str) -> None: ...

    def discard_key(self, key_id: str) -> None:
        """Forget every cached token of API key `key_id` (it was revoked)."""
        ...

    def discard_keys(self) -> None:
        """Forget every cached API key (one was revoked by another process sharing the database)."""
        ...


class MemoryTokenCache:
    """The in-process `TokenCache`: a dict bounded to `size` entries, the oldest dropped first."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self.size = size
        self._entries: dict[str, Verified] = {}
        self.get = self._entries.get  # the hot path: a dict lookup, no frame of ours

    def put(self, token: str, verified: Verified) -> None:
        """Remember a verified token."""
        if len(self._entries) >= self.size:
            del self._entries[next(iter(self._entries))]
        self._entries[token] = verified

    def discard(self, token: str) -> None:
        """Forget one token (it expired)."""
        self._entries.pop(token, None)

    def discard_key(self, key_id: str) -> None:
        """Forget every cached token of API key `key_id`."""
        for token in [t for t, v in self._entries.items() if v.key is not None and v.key.id == key_id]:
            del self._entries[token]

    def discard_keys(self) -> None:
        """Forget every cached API key (JWTs stay: they are re-checked against the users on every request)."""
        for token in [t for t, v in self._entries.items() if v.key is not None]:
            del self._entries[token]


class TokenVerifier:
    """Verify JWTs once (PyJWT) and API keys once (database), then trust the cached result until it expires.

    Every request still checks, in memory, that the user exists with the same id, that its token generation has
    not moved on (`auth passwd`, `auth revoke`, `auth set-role`) and that the token id was not revoked (logout).
    """

    def __init__(
        self,
        secret: str,
        users: Directory,
        keys: Callable[[], ApiKeyStore],
        revocations: Callable[[], RevocationList],
        cache: TokenCache,
    ) -> None:
        self.secret = secret
        self.users = users
        self.keys = keys
        self.revocations = revocations
        self.cache = cache

    async def principal(self, token: str) -> Principal:
        """The account a valid token speaks for; raises TokenError otherwise."""
        verified = self.cache.get(token)
        if verified is None:
            verified = await self._verify(token)
        if verified.expires < time.time():
            self.cache.discard(token)
            raise TokenError(_EXPIRED if verified.claims is not None else _BAD_KEY)
        claims = verified.claims
        if claims is None:
            return self._key_principal(verified)
        user = self.users.get(claims.sub)
        if user is not verified.user or verified.principal is None:
            if _newer_than(user, claims) and claims.iat >= time.time() - FRESH_SECS:
                user = await self.users.fetch(
                    claims.sub
                )  # issued elsewhere after a change not loaded here yet
            if user is None or user.id != claims.uid:
                raise TokenError(f"user '{claims.sub}' no longer exists; run `specai login` again")
            if user.token_generation != claims.gen:
                raise TokenError("token revoked; run `specai login` again")
            verified.user, verified.principal = (
                user,
                Principal(user.id, user.username, user.role, max_scope(user.role)),
            )
        if self.revocations().is_revoked(claims.jti):
            raise TokenError("token revoked; run `specai login` again")
        return verified.principal

    async def _verify(self, token: str) -> Verified:
        """Check a token not seen before: a JWT's signature and claims, or an API key in the database."""
        if is_api_key(token):
            key = await self.keys().verify(token)
            if key is None:
                raise TokenError(_BAD_KEY)
            verified = Verified(key.expires_at.timestamp() if key.expires_at else math.inf, key=key)
        else:
            claims = auth.decode_token(self.secret, token)
            verified = Verified(float(claims.exp), claims=claims)
        self.cache.put(token, verified)
        return verified

    def _key_principal(self, verified: Verified) -> Principal:
        key = verified.key
        assert key is not None
        user = self.users.by_id(key.owner_id)
        if user is None:
            raise TokenError(f"the account of key '{key.name}' no longer exists")
        if user is not verified.user or verified.principal is None:
            widest = max_scope(user.role)
            scope = key.scope if SCOPES.index(key.scope) <= SCOPES.index(widest) else widest
            verified.user, verified.principal = user, Principal(user.id, user.username, user.role, scope)
        return verified.principal

    def forget_key(self, key_id: str) -> None:
        """Drop a revoked key from the cache at once."""
        self.cache.discard_key(key_id)

    async def forget_keys(self) -> None:
        """Drop every cached API key: the next use of each checks the database again (another process revoked one;
        a change-counter reload)."""
        self.cache.discard_keys()


def _newer_than(user: User | None, claims: auth.TokenClaims) -> bool:
    """True when a token may name a user change this process has not loaded: an unknown user or id, or a later
    token generation (an older one is plainly revoked)."""
    return user is None or user.id != claims.uid or claims.gen > user.token_generation


class BearerAuth:
    """Require `Authorization: Bearer <token>`; handlers opt out with `exclude_from_auth=True` (`/schema` is public).

    Not a middleware of its own: `limits.RequestGate` calls it from the one layer every request passes.
    """

    def __init__(self, verifier: TokenVerifier, peers: Callable[[str], Principal] | None = None) -> None:
        self.verifier = verifier
        self.peers = peers  # verifies mesh peer tokens (signed by the registry this server joined)

    async def check(self, scope: HTTPScope, header: bytes | None) -> None:
        """Put the principal of the request's Authorization `header` in `scope["user"]`, or raise; skipped for CORS
        preflights (they carry no credentials), the API description and routes that opt out."""
        method, path = scope["method"], scope["path"]
        if (
            method == "OPTIONS"
            or scope["route_handler"].opt.get("exclude_from_auth")
            or (path.startswith("/schema") and path[7:8] in ("", "/"))
        ):
            return
        token = _token(header)
        if (
            self.peers is not None
            and not token.startswith(auth.TOKEN_PREFIX)
            and looks_like_peer_token(token)
        ):
            who = self._peer(token, path)
        else:
            who = await self.verifier.principal(token)
        if method not in _READ_METHODS and path != LOGOUT_PATH and not who.allows("write"):
            raise ForbiddenError(f"{method} {path} needs a key with scope 'write' (this one is read-only)")
        scope["user"] = who

    def _peer(self, token: str, path: str) -> Principal:
        """A peer token acts for one member instance, on the mesh and sync routes only."""
        assert self.peers is not None
        if not path.startswith(MESH_PATHS):
            raise TokenError("a mesh peer token is accepted on /registry/*, /messages/* and /sync/* only")
        return self.peers(token)


def bearer(scope: Scope) -> str:
    """The bearer token of a request (TokenError when it has none, or a malformed one)."""
    return _token(next((value for name, value in scope["headers"] if name == b"authorization"), None))


def _token(header: bytes | None) -> str:
    if header is None:
        raise TokenError(
            "missing bearer token: send 'Authorization: Bearer <token>' (get one with `specai login`)"
        )
    if header.startswith(b"Bearer "):  # what every client sends: the general parse below, minus its steps
        scheme, token = "bearer", header[7:].decode("latin-1").strip()
    else:
        scheme, _, token = header.decode("latin-1").partition(" ")
        token = token.strip()
    if not token or scheme.lower() != "bearer":
        raise TokenError("malformed Authorization header: expected 'Bearer <token>'")
    return token


def principal(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """The account behind a request; the single local admin when auth is off."""
    user = connection.scope.get("user")
    return user if isinstance(user, Principal) else LOCAL


def mesh_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Route guard: mesh and sync routes need a `mesh` or `admin` account with a token of that scope (else 403)."""
    who = principal(connection)
    if not who.allows("mesh"):
        raise ForbiddenError(
            f"mesh routes are for mesh and admin accounts with a token of that scope "
            f"('{who.name}' is a {who.role} account, this token's scope is '{who.scope}')"
        )
