"""Exchange a password for a bearer token; hash passwords for the credentials file."""

import anyio
from litestar import Request, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from specai import auth
from specai.errors import AuthDisabledError, InvalidCredentialsError
from specai.server.errors import error_responses
from specai.server.schemas.auth import HashIn, HashOut, TokenIn, TokenOut, WhoAmIOut
from specai.server.security import principal
from specai.server.state import ServerState
from specai.users.directory import User, check_password_length
from specai.users.throttle import Lane, checked_login, client_key


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/auth/token` and `/auth/hash`, bound to this server's state."""

    @post(
        "/auth/token",
        exclude_from_auth=True,
        operation_id="CreateToken",
        tags=["auth"],
        status_code=200,
        responses=error_responses(401, 413, 429),
    )
    async def create_token(data: JSONBody[TokenIn], request: Request) -> TokenOut:
        """Check username and password (throttled, off the event loop) and return a signed JWT."""
        if server.users is None:
            raise AuthDisabledError("authentication is disabled on this server; no token is needed")
        users = server.users
        address = client_key(request.client.host if request.client else None)

        async def verify() -> User | None:
            return await users.login(data.username, data.password)

        user = await checked_login(
            server.login_throttle, server.password_gate, data.username, address, verify
        )
        if user is None:
            raise InvalidCredentialsError("invalid username or password")
        expiry = server.settings.auth.token_expiry_secs
        token, _ = auth.issue_token(
            server.token_secret, user.username, expiry, user_id=user.id, generation=user.token_generation
        )
        return TokenOut(token=token, token_type="Bearer", expires_in=expiry)

    @post(
        "/auth/hash",
        operation_id="HashPassword",
        tags=["auth"],
        status_code=200,
        responses=error_responses(401, 403, 413, 429),
    )
    async def hash_password(data: JSONBody[HashIn], request: Request) -> HashOut:
        """Return an argon2id hash of a password (protected when auth is on; rate-limited per user, and it
        queues behind logins for a password-check slot)."""
        check_password_length(data.password, server.settings.auth.min_password_length)
        await server.hash_limit.hit(principal(request).user_id)
        async with server.password_gate.slot(Lane.SUSPECT):
            hashed = await anyio.to_thread.run_sync(auth.hash_password, data.password)
        return HashOut(password_hash=hashed)

    @get(
        "/auth/whoami",
        operation_id="WhoAmI",
        tags=["auth"],
        sync_to_thread=False,
        responses=error_responses(401),
    )
    def whoami(request: Request) -> WhoAmIOut:
        """The account this request's token speaks for, its role and the token's scope (any valid token)."""
        who = principal(request)
        return WhoAmIOut(who.name, who.user_id, who.role, who.scope, server.users is not None)

    return [create_token, hash_password, whoami]
