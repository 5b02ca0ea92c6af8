"""Bearer-token authentication for every route not marked `exclude_from_auth`, with a cache of verified tokens."""

from __future__ import annotations

import time
from typing import Any

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from specai import auth
from specai.access import LOCAL, Principal
from specai.errors import TokenError
from specai.users import UserDirectory

_CACHE_SIZE = 4096


class TokenVerifier:
    """Verify JWTs once (PyJWT), then trust the cached claims until `exp`; the user must still exist."""

    def __init__(self, secret: str, users: UserDirectory) -> None:
        self.secret = secret
        self.users = users
        self._cache: dict[str, auth.TokenClaims] = {}

    def subject(self, token: str) -> str:
        """The username a valid token speaks for; raises TokenError otherwise."""
        claims = self._cache.get(token)
        if claims is None:
            claims = auth.decode_token(self.secret, token)
            if len(self._cache) >= _CACHE_SIZE:
                del self._cache[next(iter(self._cache))]  # oldest first
            self._cache[token] = claims
        if claims.exp < time.time():
            self._cache.pop(token, None)
            raise TokenError("token expired; run `specai login` again")
        if not self.users.exists(claims.sub):
            raise TokenError(f"user '{claims.sub}' no longer exists; run `specai login` again")
        return claims.sub


class BearerAuthMiddleware(ASGIMiddleware):
    """Require `Authorization: Bearer <token>`; handlers opt out with `exclude_from_auth=True`."""

    scopes = (ScopeType.HTTP,)
    exclude_path_pattern = ("^/schema(/|$)",)
    exclude_opt_key = "exclude_from_auth"

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if scope.get("method") != "OPTIONS":  # CORS preflight carries no credentials
            scope["user"] = self.verifier.subject(_bearer(scope))
        await next_app(scope, receive, send)


def _bearer(scope: Scope) -> str:
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
    principal(connection).require("mesh", "the mesh routes")
