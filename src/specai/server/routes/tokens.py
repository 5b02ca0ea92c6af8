"""Revoking the token in hand (`/auth/logout`) and long-lived API keys for programs (`/auth/keys`)."""

from __future__ import annotations

import datetime as dt

from litestar import Request, delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, JSONBody

from specai import auth
from specai.errors import AuthDisabledError
from specai.server.errors import error_responses
from specai.server.schemas.auth import ApiKeyListOut, ApiKeyOut, KeyIn, NewApiKeyOut
from specai.server.security import TokenVerifier, bearer, principal
from specai.server.state import ServerState
from specai.users.access import check_scope_for_role
from specai.users.keys import ApiKey, check_key_request, is_api_key


def routes(server: ServerState, verifier: TokenVerifier | None) -> list[HTTPRouteHandler]:
    """`/auth/logout` and `/auth/keys`, bound to this server's token verifier (None: auth is off)."""

    def enabled() -> TokenVerifier:
        if verifier is None:
            raise AuthDisabledError(
                "authentication is disabled on this server; there are no tokens to manage"
            )
        return verifier

    @post(
        "/auth/logout",
        operation_id="Logout",
        tags=["auth"],
        status_code=204,
        responses=error_responses(401, 404),
    )
    async def logout(request: Request) -> None:
        """Revoke the token this request carries (an API key is revoked like `DELETE /auth/keys/{id}`)."""
        checker, token = enabled(), bearer(request.scope)
        who = principal(request)
        if is_api_key(token):
            key_id = token.split("_")[1]
            await server.keys().revoke(key_id, who.user_id)
            checker.forget_key(key_id)
            return
        claims = auth.decode_token(server.token_secret, token)
        expires = dt.datetime.fromtimestamp(claims.exp, dt.UTC)
        await server.revocations().revoke(claims.jti, who.user_id, expires)

    @post(
        "/auth/keys",
        operation_id="CreateApiKey",
        tags=["auth"],
        status_code=201,
        responses=error_responses(401, 403, 409, 413),
    )
    async def create_key(data: JSONBody[KeyIn], request: Request) -> NewApiKeyOut:
        """Make an API key for the caller; the key is in this answer only (only its hash is stored)."""
        enabled()
        name, scope, days = check_key_request(data.name, data.scope, data.expires_days)
        who = principal(request)
        check_scope_for_role(scope, who.role)
        who.require(scope, f"creating a key of scope '{scope}'")  # a key never widens the token that made it
        key, secret = await server.keys().create(who, name, scope, days)
        return NewApiKeyOut(**key.as_dict(), key=secret)

    @get("/auth/keys", operation_id="ListApiKeys", tags=["auth"], responses=error_responses(401))
    async def list_keys(request: Request) -> ApiKeyListOut:
        """The caller's keys (an admin sees every account's), newest first, never the keys themselves."""
        enabled()
        who = principal(request)
        keys = await server.keys().list(None if who.is_admin else who.user_id)
        return ApiKeyListOut(keys=[_key(key) for key in keys])

    @delete(
        "/auth/keys/{key_id:str}",
        operation_id="RevokeApiKey",
        tags=["auth"],
        status_code=200,
        responses=error_responses(401, 403, 404),
    )
    async def revoke_key(key_id: FromPath[str], request: Request) -> ApiKeyOut:
        """Revoke one of the caller's keys (an admin: anyone's); 404 for a key that is not theirs."""
        checker, who = enabled(), principal(request)
        key = await server.keys().revoke(key_id, None if who.is_admin else who.user_id)
        checker.forget_key(key.id)
        return _key(key)

    return [logout, create_key, list_keys, revoke_key]


def _key(key: ApiKey) -> ApiKeyOut:
    return ApiKeyOut(**key.as_dict())
