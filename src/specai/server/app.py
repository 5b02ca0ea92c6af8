"""`create_app(settings)`: the only place routes, middleware, services, backends and background work are assembled."""

from __future__ import annotations

import os

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.openapi.spec import Components, SecurityScheme

from specai import __version__, auth
from specai.agents.runtime import AgentRuntime
from specai.config import Settings
from specai.errors import CredentialsError
from specai.graph.feed import ChangeNotifier
from specai.identity.tls import CertInfo, ensure_server_cert, read_cert
from specai.mesh.registry import load_instance_id
from specai.server import a2a, mcp
from specai.server.errors import EXCEPTION_HANDLERS
from specai.server.lifespan import Lifespan
from specai.server.limits import offline_openapi, request_gate, security_headers
from specai.server.routes import agents, graph, graph_shares, health, mesh, openai, sessions, sync, tokens
from specai.server.routes import auth as auth_routes
from specai.server.security import BearerAuth, MemoryTokenCache, TokenVerifier
from specai.server.state import ServerState
from specai.store import Store
from specai.store.urls import shares_state
from specai.users.directory import Directory, UserDirectory
from specai.users.stored_throttle import throttles
from specai.users.table import DatabaseDirectory
from specai.users.throttle import VerifyGate

# How stale the credentials file may be seen by a request: at most one `stat` per millisecond. A `stat` lets go of
# the GIL, and under load every release hands it to granian's threads and costs a wait to get it back (measured:
# about a fifth of a request); an edit by `specai auth` still counts for every request a millisecond later.
USERS_RECHECK_SECS = 0.001


def create_app(settings: Settings, *, store: Store | None = None, cert: CertInfo | None = None) -> Litestar:
    """Build the Litestar app for `settings`; fails closed when auth is on but unusable.

    `cert` is the certificate served (default: the one `settings` name or generate); with `store` the app uses
    that open store (its caller closes it) instead of opening `[database]`. With `settings.join`, the server
    joins that mesh registry once it answers.
    """
    users = _users(settings)
    state = _state(settings, cert or read_cert(ensure_server_cert(settings).cert), users)
    lifespan = Lifespan(state, store)
    openapi = offline_openapi("specai", __version__)
    verifier: TokenVerifier | None = None
    bearer: BearerAuth | None = None
    if users is not None:
        verifier = TokenVerifier(state.token_secret, users, state.keys, state.revocations, MemoryTokenCache())
        state.verifier = verifier
        bearer = BearerAuth(verifier, peers=state.peer)
        openapi.components = Components(
            security_schemes={
                "BearerToken": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")
            }
        )
        openapi.security = [{"BearerToken": []}]
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
            *graph.routes(state),
            *graph_shares.routes(state),
            *mesh.routes(state),
            *sync.routes(state),
            *(a2a.routes(state) if settings.a2a.enabled else ()),
            *(mcp.routes(state) if settings.mcp.enabled else ()),
        ],
        on_startup=[lifespan.startup],
        lifespan=[mcp.lifespan] if settings.mcp.enabled else [],
        on_shutdown=[lifespan.shutdown],
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[request_gate(settings.server.max_body_bytes, bearer)],
        cors_config=cors,
        request_max_body_size=settings.server.max_body_bytes,
        openapi_config=openapi,
        before_send=[security_headers],
        debug=False,
    )
    app.state.specai = state
    app.state.lifespan = lifespan
    return app


def _users(settings: Settings) -> Directory | None:
    """The user directory when auth is on (None when off): the credentials file, where no users at all refuses to
    start; on PostgreSQL the users table, loaded (and checked for users) once the lifespan opens the store."""
    if not settings.auth.enabled:
        return None
    if shares_state(settings):
        return DatabaseDirectory()
    users = UserDirectory(settings.credentials_file, recheck_secs=USERS_RECHECK_SECS)
    if not len(users):
        raise CredentialsError(
            f"auth is enabled but {settings.credentials_file} has no users; add one with `specai auth add-user`"
        )
    return users


def _state(settings: Settings, cert: CertInfo, users: Directory | None) -> ServerState:
    """The complete server state; the login throttles follow `[auth]`, in the database on PostgreSQL (shared by
    every process on it), else in this process."""
    config, secret = settings.auth, auth.load_token_secret(settings)
    instance_id = load_instance_id(settings.home)
    state: ServerState  # the stored throttles read its store once the lifespan has opened it
    login_throttle, hash_limit = throttles(config, (lambda: state.store) if shares_state(settings) else None)
    state = ServerState(
        settings=settings,
        runtime=AgentRuntime(settings),
        cert=cert,
        token_secret=secret,
        instance_id=instance_id,
        users=users,
        login_throttle=login_throttle,
        password_gate=VerifyGate(os.cpu_count() or 1, config.max_waiting_logins),
        hash_limit=hash_limit,
        notifier=ChangeNotifier(),
    )
    return state
