"""The assembly seam: `create_app` on an injected store (SQLite and PostgreSQL), driven in process, no server process.

Litestar's test clients run the app on an event loop of their own (a portal thread), where a PostgreSQL store opened
by the test's loop cannot be used; so the app's lifespan and requests run here, on the test's loop, through httpx's
ASGI transport (requests and responses are the app's own, only the socket is missing).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest
from databases import seed_users
from litestar import Litestar

from specai.agents.sessions import SessionStore
from specai.config import AuthSettings, JoinSettings, Settings
from specai.server.app import create_app
from specai.server.lifespan import Lifespan
from specai.server.state import ServerState
from specai.store import Store
from specai.users.directory import add_user

# The engine fixtures of conftest.py: every test runs on SQLite and on PostgreSQL.

pytestmark = pytest.mark.anyio
PASSWORD = "pw-one-two"


@contextlib.asynccontextmanager
async def in_process(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """Start the app (its lifespan), hand out a client whose requests it answers in this loop, then stop it."""
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # Litestar is an ASGI app; the stubs disagree
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_a_query_lands_in_the_injected_store_which_stays_open(
    store: Store, db_settings: Settings
) -> None:
    app = create_app(db_settings, store=store)
    async with in_process(app) as client:
        answer = await client.post("/query", json={"message": "hello"})
        assert answer.status_code == 200, answer.text
        session_id = answer.json()["session_id"]
        listed = await client.get("/sessions")
        assert [s["id"] for s in listed.json()["sessions"]] == [session_id]
        assert (await client.get("/health")).json()["active_sessions"] == 1
    # the app used the store it was given and left it open for its owner
    stored = await SessionStore(store).messages(session_id, "local")
    assert [m.role for m in stored] == ["user", "assistant"]


async def test_an_authenticated_route_on_the_injected_store(store: Store, db_settings: Settings) -> None:
    path = db_settings.home / "credentials.json"
    add_user(path, "alice", PASSWORD)
    settings = dataclasses.replace(
        db_settings, auth=AuthSettings(enabled=True, credentials_file=path, token_secret="s" * 40)
    )
    seed_users(settings)
    async with in_process(create_app(settings, store=store)) as client:
        assert (await client.get("/agents")).status_code == 401
        login = await client.post("/auth/token", json={"username": "alice", "password": PASSWORD})
        assert login.status_code == 200, login.text
        headers = {"Authorization": f"Bearer {login.json()['token']}"}
        agents = await client.get("/agents", headers=headers)
        assert agents.status_code == 200
        assert agents.json()["agents"][0]["id"] == "default"
        key = await client.post("/auth/keys", json={"name": "ci"}, headers=headers)
        assert key.status_code == 201, key.text
    assert await store.version() > 0  # the injected store is still open after shutdown


async def test_state_is_complete_when_built_and_join_settings_travel_in_settings(
    db_settings: Settings,
) -> None:
    join = JoinSettings("https://127.0.0.1:9", "AA:" * 31 + "AA")
    app = create_app(dataclasses.replace(db_settings, join=join))
    state: ServerState = app.state.specai
    assert state.join_url == join.url
    assert state.self_info().capabilities == ["query"]  # a member, not a registry
    assert isinstance(app.state.lifespan, Lifespan)
    with pytest.raises(RuntimeError, match="not open"):
        state.sessions()  # the services exist between start-up and shutdown only
