"""Bearer-token authentication for every route not marked `exclude_from_auth`, with a cache of verified tokens."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from specai import auth
from specai.errors import ForbiddenError, TokenError
from specai.mesh.peer_token import looks_like_peer_token
from specai.store.types import utcnow
from specai.users.access import LOCAL, SCOPES, Principal, max_scope
from specai.users.directory import UserDirectory
from specai.users.keys import ApiKey, ApiKeyStore, RevocationList, is_api_key

_CACHE_SIZE = 4096
_READ_METHODS = ("GET", "HEAD")
LOGOUT_PATH = "/auth/logout"  # any token may revoke itself
MESH_PATHS = ("/registry/", "/messages/")  # where peer tokens are accepted


class TokenVerifier:
    """Verify JWTs once (PyJWT) and API keys once (database), then trust the cached result until it expires.

    Every request still checks, in memory, that the user exists with the same id, that its token generation has
    not moved on (`auth passwd`, `auth revoke`, `auth set-role`) and that the token id was not revoked (logout).
    """

    def __init__(
        self,
        secret: str,
        users: UserDirectory,
        keys: Callable[[], ApiKeyStore],
        revocations: Callable[[], RevocationList],
    ) -> None:
        self.secret = secret
        self.users = users
        self.keys = keys
        self.revocations = revocations
        self._claims: dict[str, auth.TokenClaims] = {}
        self._keys: dict[str, ApiKey] = {}

    async def principal(self, token: str) -> Principal:
        """The account a valid token speaks for; raises TokenError otherwise."""
        if is_api_key(token):
            return await self._key_principal(token)
        claims = self._claims.get(token)
        if claims is None:
            claims = auth.decode_token(self.secret, token)
            _remember(self._claims, token, claims)
        if claims.exp < time.time():
            self._claims.pop(token, None)
            raise TokenError("token expired; run `specai login` again")
        user = self.users.get(claims.sub)
        if user is None or user.id != claims.uid:
            raise TokenError(f"user '{claims.sub}' no longer exists; run `specai login` again")
        if user.token_generation != claims.gen or self.revocations().is_revoked(claims.jti):
            raise TokenError("token revoked; run `specai login` again")
        return Principal(user.id, user.username, user.role, max_scope(user.role))

    async def _key_principal(self, token: str) -> Principal:
        key = self._keys.get(token)
        if key is None:
            key = await self.keys().verify(token)
            if key is None:
                raise TokenError("invalid, expired or revoked API key")
            _remember(self._keys, token, key)
        elif not key.usable(utcnow()):
            self._keys.pop(token, None)
            raise TokenError("invalid, expired or revoked API key")
        user = self.users.by_id(key.owner_id)
        if user is None:
            raise TokenError(f"the account of key '{key.name}' no longer exists")
        widest = max_scope(user.role)
        scope = key.scope if SCOPES.index(key.scope) <= SCOPES.index(widest) else widest
        return Principal(user.id, user.username, user.role, scope)

    def forget_key(self, key_id: str) -> None:
        """Drop a revoked key from the cache at once."""
        for token in [t for t, key in self._keys.items() if key.id == key_id]:
            del self._keys[token]


def _remember(cache: dict[str, Any], token: str, value: Any) -> None:
    if len(cache) >= _CACHE_SIZE:
        del cache[next(iter(cache))]  # oldest first
    cache[token] = value


class BearerAuthMiddleware(ASGIMiddleware):
    """Require `Authorization: Bearer <token>`; handlers opt out with `exclude_from_auth=True`."""

    scopes = (ScopeType.HTTP,)
    exclude_path_pattern = ("^/schema(/|$)",)
    exclude_opt_key = "exclude_from_auth"

    def __init__(self, verifier: TokenVerifier, peers: Callable[[str], Principal] | None = None) -> None:
        self.verifier = verifier
        self.peers = peers  # verifies mesh peer tokens (signed by the registry this server joined)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        method = scope.get("method")
        if method != "OPTIONS":  # CORS preflight carries no credentials
            token = bearer(scope)
            if (
                self.peers is not None
                and not token.startswith(auth.TOKEN_PREFIX)
                and looks_like_peer_token(token)
            ):
                who = self._peer(token, scope["path"])
            else:
                who = await self.verifier.principal(token)
            if not who.allows("write") and method not in _READ_METHODS and scope["path"] != LOGOUT_PATH:
                raise ForbiddenError(
                    f"{method} {scope['path']} needs a key with scope 'write' (this one is read-only)"
                )
            scope["user"] = who
        await next_app(scope, receive, send)

    def _peer(self, token: str, path: str) -> Principal:
        """A peer token acts for one member instance, on the mesh routes only."""
        assert self.peers is not None
        if not path.startswith(MESH_PATHS):
            raise TokenError("a mesh peer token is accepted on /registry/* and /messages/* only")
        return self.peers(token)


def bearer(scope: Scope) -> str:
    header: Any = next((value for name, value in scope["headers"] if name == b"authorization"), None)
    if header is None:
        raise TokenError(
            "missing bearer token: send 'Authorization: Bearer <token>' (get one with `specai login`)"
        )
    scheme, _, token = header.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("malformed Authorization header: expected 'Bearer <token>'")
    return token.strip()


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
