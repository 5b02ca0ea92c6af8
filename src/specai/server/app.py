"""`create_app(settings)`: the only place routes, auth, errors, CORS and OpenAPI are assembled."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.openapi.spec import Components, SecurityScheme

from specai import __version__, auth
from specai.config import Settings
from specai.errors import CredentialsError
from specai.identity.tls import CertInfo
from specai.server.errors import EXCEPTION_HANDLERS
from specai.server.limits import offline_openapi, request_limits, security_headers
from specai.server.routes import agents, graph, graph_shares, health, mesh, openai, sessions, tokens
from specai.server.routes import auth as auth_routes
from specai.server.security import BearerAuthMiddleware, TokenVerifier
from specai.server.state import ServerState
from specai.users.directory import UserDirectory


def create_app(
    settings: Settings, cert: CertInfo, *, join_url: str | None = None, join_fingerprint: str | None = None
) -> Litestar:
    """Build the Litestar app for `settings`, serving `cert`; fails closed when auth is on but unusable.

    With `join_url`, the server joins that mesh registry once it answers (pinned to `join_fingerprint`).
    """
    users: UserDirectory | None = None
    verifier: TokenVerifier | None = None
    if settings.auth.enabled:
        users = UserDirectory(settings.credentials_file)
        if not len(users):
            raise CredentialsError(
                f"auth is enabled but {settings.credentials_file} has no users; "
                "add one with `specai auth add-user`"
            )
    secret = auth.load_token_secret(settings)
    state = ServerState.build(settings, cert, secret, users)
    state.join_url, state.join_fingerprint = join_url, join_fingerprint
    middleware: list[Any] = []
    openapi = offline_openapi("specai", __version__)
    if users is not None:
        verifier = TokenVerifier(secret, users, state.keys, state.revocations)
        middleware.append(BearerAuthMiddleware(verifier, peers=state.peer))
        openapi.components = Components(
            security_schemes={
                "BearerToken": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")
            }
        )
        openapi.security = [{"BearerToken": []}]
    # after auth, so a request without a valid token gets its 401 before its body is read
    middleware.append(request_limits(settings.server.max_body_bytes))
    cors = None
    if settings.server.enable_cors and settings.server.cors_origins:  # CORS is off until origins are listed
        cors = CORSConfig(allow_origins=list(settings.server.cors_origins), allow_credentials=False)
    app = Litestar(
        route_handlers=[
            *health.routes(state),
            *auth_routes.routes(state),
            *tokens.routes(state, verifier),
            *agents.routes(state),
            *sessions.routes(state),
            *openai.routes(state),
            *graph_shares.routes(state),
            *graph.routes(state),
            *mesh.routes(state),
        ],
        on_startup=[state.start],
        on_shutdown=[state.stop],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=middleware,
        cors_config=cors,
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=openapi,
        before_send=[security_headers],
        debug=False,
    )
    app.state.specai = state
    return app
