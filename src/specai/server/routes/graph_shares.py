"""Graph sessions and their shares over HTTP: `/graph/sessions` and `/graph/sessions/{session_id}/shares`."""

from __future__ import annotations

from litestar import Request, delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, JSONBody

from specai.errors import NotFoundError
from specai.graph.access import ShareEntry
from specai.graph.store import GraphStore
from specai.server.errors import error_responses
from specai.server.schemas.graph import (
    GraphSessionListOut,
    GraphSessionOut,
    SharedOut,
    ShareIn,
    ShareOut,
    SharesOut,
    UnsharedOut,
)
from specai.server.security import principal
from specai.server.state import ServerState


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """The session and sharing routes, bound to this server's state."""

    def graph() -> GraphStore:
        return server.graph()

    def user(name: str) -> tuple[str, str]:
        """(user id, name) of an account of this server, or 404 like any unknown thing."""
        found = server.users.get(name) if server.users is not None else None
        if found is None:
            raise NotFoundError(f"no user '{name}'")
        return found.id, found.username

    def name_of(user_id: str) -> str:
        found = server.users.by_id(user_id) if server.users is not None else None
        return found.username if found is not None else user_id

    @get("/graph/sessions", operation_id="ListGraphSessions", tags=["graph"], responses=error_responses(401))
    async def list_sessions(request: Request) -> GraphSessionListOut:
        """The graph sessions the caller owns or that are shared with them, with their owner and the access."""
        entries = await graph().sessions(principal(request))
        return GraphSessionListOut(
            sessions=[GraphSessionOut(e.session_id, name_of(e.owner_id), e.access) for e in entries]
        )

    @get(
        "/graph/sessions/{session_id:str}/shares",
        operation_id="ListGraphShares",
        tags=["graph"],
        responses=error_responses(401, 403, 404),
    )
    async def list_shares(request: Request, session_id: FromPath[str]) -> SharesOut:
        """Who a session is shared with (its owner or an admin only)."""
        owner_id, shares = await graph().shares(session_id, principal(request))
        return SharesOut(session_id, name_of(owner_id), [_share(s) for s in shares])

    @post(
        "/graph/sessions/{session_id:str}/shares",
        operation_id="ShareGraphSession",
        tags=["graph"],
        responses=error_responses(401, 403, 404, 413),
    )
    async def share(request: Request, session_id: FromPath[str], data: JSONBody[ShareIn]) -> SharedOut:
        """Share a session with a user, read-write or `read_only`; sharing again changes the access."""
        who = principal(request)
        await graph().check_manager(session_id, who)  # before the name: strangers learn nothing about users
        user_id, name = user(data.username)
        entry = await graph().share(session_id, who, user_id, name, writable=not data.read_only)
        shared = _share(entry)
        return SharedOut(session_id, shared.username, shared.access)

    @delete(
        "/graph/sessions/{session_id:str}/shares/{username:str}",
        operation_id="UnshareGraphSession",
        tags=["graph"],
        status_code=200,
        responses=error_responses(401, 403, 404),
    )
    async def unshare(request: Request, session_id: FromPath[str], username: FromPath[str]) -> UnsharedOut:
        """Stop sharing a session with a user; their open change streams end at the next change."""
        who = principal(request)
        await graph().check_manager(session_id, who)
        user_id, name = user(username)
        await graph().unshare(session_id, who, user_id, name)
        return UnsharedOut(session_id, name)

    return [list_sessions, list_shares, share, unshare]


def _share(entry: ShareEntry) -> ShareOut:
    return ShareOut(entry.user_name, "write" if entry.writable else "read")
