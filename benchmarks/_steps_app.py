"""The servers of bench_http.py's steps: a bare Litestar handler answering specai's /agents body, plus specai's layers.

Each step adds one layer to the one before (see bench_http.py for what each costs): bare, +headers (the
`security_headers` before_send hook), +limits (the request gate without auth), +auth (the gate with the bearer
token check), +tracking (the runner's request tracker). Served with the granian settings of
src/specai/server/run.py, on the certificate, credentials and database of a specai home made by bench_http.py.

Usage: python benchmarks/_steps_app.py STEP PORT HOME   (serves 127.0.0.1:PORT until SIGTERM)
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
STEPS = ("bare", "+headers", "+limits", "+auth", "+tracking")


async def step_app(step: str, settings: Any, store: Any) -> Any:
    """The ASGI app of `step`: a bare /agents handler with specai's body, plus every layer up to `step`."""
    from litestar import Litestar, get

    from specai import auth
    from specai.agents.runtime import AgentRuntime
    from specai.server.app import USERS_RECHECK_SECS
    from specai.server.limits import request_gate, security_headers
    from specai.server.routes.agents import agent_list
    from specai.server.run import RequestTracker
    from specai.server.security import BearerAuth, MemoryTokenCache, TokenVerifier
    from specai.users.directory import UserDirectory
    from specai.users.keys import ApiKeyStore, StoredRevocations

    level = STEPS.index(step)
    body = agent_list(AgentRuntime(settings))

    def list_agents() -> Any:
        return body

    list_agents.__annotations__["return"] = type(body)  # serialised per request, like specai's handler

    @get("/health", sync_to_thread=False, exclude_from_auth=True)
    def health() -> dict[str, str]:
        return {"status": "healthy"}

    bearer = None
    if level >= STEPS.index("+auth"):
        keys, revocations = ApiKeyStore(store), StoredRevocations(store)
        await revocations.load()
        secret, users = (
            auth.load_token_secret(settings),
            UserDirectory(settings.credentials_file, recheck_secs=USERS_RECHECK_SECS),
        )
        verifier = TokenVerifier(secret, users, lambda: keys, lambda: revocations, MemoryTokenCache())
        bearer = BearerAuth(verifier)  # no peer tokens: a JWT of ours skips that check first anyway
    app: Any = Litestar(
        route_handlers=[get("/agents", sync_to_thread=False)(list_agents), health],
        before_send=[security_headers] if level >= STEPS.index("+headers") else [],
        middleware=[request_gate(settings.server.max_body_bytes, bearer)]
        if level >= STEPS.index("+limits")
        else [],
        debug=False,
    )
    return RequestTracker(app) if level >= STEPS.index("+tracking") else app


async def serve_step(step: str, port: int, home: Path) -> None:
    """Serve `step` until terminated, with specai's granian settings, certificate and database."""
    from granian.server.embed import Server

    from specai.config import load_settings
    from specai.identity.tls import CertPaths
    from specai.server.run import granian_options
    from specai.store import Store

    settings = load_settings(
        env={"SPECAI_HOME": str(home), "SPECAI_CONFIG": str(home.parent / "bench.config.toml")}
    )
    tls = home / "tls"
    cert = CertPaths(cert=tls / "server.crt", key=tls / "server.key", generated=False)
    store = await Store.open(settings, migrate=False)
    try:
        app = await step_app(step, settings, store)
        await Server(app, **granian_options(settings.server, HOST, port, cert)).serve()
    finally:
        await store.close()


if __name__ == "__main__":
    asyncio.run(serve_step(sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])))
