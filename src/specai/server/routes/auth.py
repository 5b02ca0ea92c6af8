"""Exchange a password for a bearer token; hash passwords for the credentials file."""

import anyio
from litestar import Request, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import JSONBody

from specai import auth
from specai.errors import AuthDisabledError, InvalidCredentialsError
from specai.server.schemas import HashIn, HashOut, TokenIn, TokenOut
from specai.server.state import ServerState
from specai.users import check_password


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/auth/token` and `/auth/hash`, bound to this server's state."""

    @post("/auth/token", exclude_from_auth=True, operation_id="CreateToken", tags=["auth"], status_code=200)
    async def create_token(data: JSONBody[TokenIn], request: Request) -> TokenOut:
        """Check username and password (throttled, off the event loop) and return a signed JWT."""
        if server.users is None:
            raise AuthDisabledError("authentication is disabled on this server; no token is needed")
        address = f"addr:{request.client.host if request.client else 'unknown'}"
        user_key = f"user:{data.username}"
        server.user_throttle.check(user_key)
        server.address_throttle.check(address)
        async with server.password_slots:
            user = await anyio.to_thread.run_sync(server.users.authenticate, data.username, data.password)
        if user is None:
            server.user_throttle.failed(user_key)
            server.address_throttle.failed(address)
            raise InvalidCredentialsError("invalid username or password")
        server.user_throttle.succeeded(user_key)
        server.address_throttle.succeeded(address)
        expiry = server.settings.auth.token_expiry_secs
        token, _ = auth.issue_token(
            server.token_secret, user.username, expiry, user_id=user.id, generation=user.token_generation
        )
        return TokenOut(token=token, token_type="Bearer", expires_in=expiry)

    @post("/auth/hash", operation_id="HashPassword", tags=["auth"], status_code=200)
    async def hash_password(data: JSONBody[HashIn]) -> HashOut:
        """Return an argon2id hash of a password (protected when auth is on; bounded concurrency)."""
        check_password(data.password)
        async with server.password_slots:
            hashed = await anyio.to_thread.run_sync(auth.hash_password, data.password)
        return HashOut(password_hash=hashed)

    return [create_token, hash_password]
