"""The knowledge graph over HTTP: `/graph/nodes`, `/graph/edges`, the `/graph/stream` change feed and `/bootstrap`.

Every route acts as the caller's principal: a session they may not see answers 404 like a missing one, a
read-only share answers 403 to writes (the rule is in specai.graph.access; the sharing routes are in graph_shares).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

from litestar import Request, Response, delete, get, patch, post, put
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from specai.errors import InvalidRequestError, NotFoundError
from specai.graph import bootstrap
from specai.graph.access import missing
from specai.graph.model import Change, Edge, Node
from specai.graph.store import GraphStore
from specai.graph.validate import DEFAULT_LIMIT, MAX_LIMIT
from specai.ids import check_session_id, parse_whole_number
from specai.server.errors import error_responses
from specai.server.schemas.graph import (
    BootstrapIn,
    BootstrapOut,
    EdgeDeletedOut,
    EdgeIn,
    EdgeOut,
    EdgePageOut,
    EdgePatchIn,
    NodeDeletedOut,
    NodeIn,
    NodeOut,
    NodePageOut,
    NodePatchIn,
    NodePropertiesIn,
)
from specai.server.security import principal
from specai.server.sse import (
    KEEPALIVE,
    STOPPING,
    event_stream_response,
    keepalive_comment,
    relay,
    shutting_down,
)
from specai.server.state import ServerState
from specai.users.access import Principal

Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description=f"page size, 1 to {MAX_LIMIT}")]
Cursor = Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page")]
SessionId = Annotated[str, QueryParameter(description="the graph's session")]
NodeType = Annotated[str | None, QueryParameter(description="only nodes of this type")]
EdgeType = Annotated[str | None, QueryParameter(description="only edges of this type")]
NodeId = Annotated[int | None, QueryParameter()]

READ = error_responses(401, 404)  # a session the caller may not see is missing
WRITE = error_responses(401, 403, 404, 409, 413, 422)  # 409: version or quota; 422: a bad type or value
DELETE = error_responses(401, 403, 404)
BOOTSTRAP = {  # 201 when it created nodes, 200 when a re-run only updated the graph; 400 outside a repository
    200: ResponseSpec(
        BootstrapOut,
        description="The session's graph was already there: updated in place",
        generate_examples=False,
    ),
    **WRITE,
}
CHANGES = (
    "Server-sent events: `open` (where the stream starts), maybe `reset` (history pruned or cursor ahead), then "
    "one event per change (`id:` its changelog id, data the change); `error` ends it (`not_found` when access "
    "is taken back, `shutting_down` when the server stops)"
)


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """The graph routes, bound to this server's state."""
    return [*_node_routes(server), *_edge_routes(server), *_feed_routes(server)]


def _node_routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/graph/nodes[/{id}]`."""

    def graph() -> GraphStore:
        return server.graph()

    @get("/graph/nodes", operation_id="ListGraphNodes", tags=["graph"], responses=READ)
    async def list_nodes(
        request: Request,
        session_id: SessionId,
        node_type: NodeType = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> NodePageOut:
        """A session's nodes, newest first, optionally of one type; `next_cursor` pages on (404 if not yours)."""
        page = await graph().list_nodes(session_id, node_type, limit, cursor, principal(request))
        return NodePageOut([_node(n) for n in page.items], len(page.items), page.next_cursor)

    @post("/graph/nodes", operation_id="CreateGraphNode", tags=["graph"], status_code=201, responses=WRITE)
    async def create_node(request: Request, data: JSONBody[NodeIn]) -> NodeOut:
        """Add a node; the first write to a session makes the caller its owner (422 for a bad type/properties)."""
        node = await graph().create_node(
            data.session_id, data.node_type, data.label, data.properties, principal(request)
        )
        return _node(node)

    @get("/graph/nodes/{node_id:int}", operation_id="GetGraphNode", tags=["graph"], responses=READ)
    async def get_node(request: Request, node_id: FromPath[int]) -> NodeOut:
        """One node."""
        return _node(await graph().get_node(node_id, principal(request)))

    @put(
        "/graph/nodes/{node_id:int}",
        operation_id="ReplaceGraphNodeProperties",
        tags=["graph"],
        responses=WRITE,
    )
    async def replace_node(
        request: Request, node_id: FromPath[int], data: JSONBody[NodePropertiesIn]
    ) -> NodeOut:
        """Replace a node's properties; with `version`, 409 if it changed since (no lost updates)."""
        node = await graph().replace_properties(node_id, data.properties, data.version, principal(request))
        return _node(node)

    @patch("/graph/nodes/{node_id:int}", operation_id="PatchGraphNode", tags=["graph"], responses=WRITE)
    async def patch_node(request: Request, node_id: FromPath[int], data: JSONBody[NodePatchIn]) -> NodeOut:
        """Change the label and/or merge properties; with `version`, 409 if it changed since."""
        if data.label is None and data.properties is None:
            raise InvalidRequestError("nothing to change: give label and/or properties")
        node = await graph().patch_node(
            node_id, data.label, data.properties, data.version, principal(request)
        )
        return _node(node)

    @delete(
        "/graph/nodes/{node_id:int}",
        operation_id="DeleteGraphNode",
        tags=["graph"],
        status_code=200,
        responses=DELETE,
    )
    async def delete_node(request: Request, node_id: FromPath[int]) -> NodeDeletedOut:
        """Delete a node and its edges in one transaction; says how many edges went with it."""
        edges = await graph().delete_node(node_id, principal(request))
        return NodeDeletedOut(deleted="node", id=node_id, edges_deleted=edges)

    return [list_nodes, create_node, get_node, replace_node, patch_node, delete_node]


def _edge_routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/graph/edges[/{id}]`."""

    def graph() -> GraphStore:
        return server.graph()

    @get("/graph/edges", operation_id="ListGraphEdges", tags=["graph"], responses=READ)
    async def list_edges(
        request: Request,
        session_id: SessionId,
        source_id: NodeId = None,
        target_id: NodeId = None,
        edge_type: EdgeType = None,
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
    ) -> EdgePageOut:
        """A session's edges, newest first, filtered by source, target and/or type."""
        page = await graph().list_edges(
            session_id, source_id, target_id, edge_type, limit, cursor, principal(request)
        )
        return EdgePageOut([_edge(e) for e in page.items], len(page.items), page.next_cursor)

    @post("/graph/edges", operation_id="CreateGraphEdge", tags=["graph"], status_code=201, responses=WRITE)
    async def create_edge(request: Request, data: JSONBody[EdgeIn]) -> EdgeOut:
        """Add an edge between two nodes of the session (404 for a missing node, 422 across sessions)."""
        edge = await graph().create_edge(
            data.session_id,
            data.source_id,
            data.target_id,
            data.edge_type,
            data.predicate,
            data.properties,
            data.weight,
            principal(request),
        )
        return _edge(edge)

    @get("/graph/edges/{edge_id:int}", operation_id="GetGraphEdge", tags=["graph"], responses=READ)
    async def get_edge(request: Request, edge_id: FromPath[int]) -> EdgeOut:
        """One edge."""
        return _edge(await graph().get_edge(edge_id, principal(request)))

    @patch("/graph/edges/{edge_id:int}", operation_id="PatchGraphEdge", tags=["graph"], responses=WRITE)
    async def patch_edge(request: Request, edge_id: FromPath[int], data: JSONBody[EdgePatchIn]) -> EdgeOut:
        """Change predicate and/or weight, merge properties; with `version`, 409 if it changed since."""
        if data.predicate is None and data.properties is None and data.weight is None:
            raise InvalidRequestError("nothing to change: give predicate, weight and/or properties")
        edge = await graph().patch_edge(
            edge_id, data.predicate, data.properties, data.weight, data.version, principal(request)
        )
        return _edge(edge)

    @delete(
        "/graph/edges/{edge_id:int}",
        operation_id="DeleteGraphEdge",
        tags=["graph"],
        status_code=200,
        responses=DELETE,
    )
    async def delete_edge(request: Request, edge_id: FromPath[int]) -> EdgeDeletedOut:
        """Delete one edge."""
        await graph().delete_edge(edge_id, principal(request))
        return EdgeDeletedOut(deleted="edge", id=edge_id)

    return [list_edges, create_edge, get_edge, patch_edge, delete_edge]


def _feed_routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/graph/stream` (the change feed) and `/bootstrap` (a generated graph)."""

    def graph() -> GraphStore:
        return server.graph()

    @get(
        "/graph/stream",
        operation_id="StreamGraphChanges",
        tags=["graph"],
        responses={**error_responses(401, 403, 404), **event_stream_response(CHANGES)},
    )
    async def stream(
        request: Request,
        session_id: SessionId,
        since: Annotated[str | None, QueryParameter(description="changelog id to resume after")] = None,
    ) -> ServerSentEvent:
        """Follow a session's changes as SSE; each event's `id` is its changelog id (resume with Last-Event-ID).

        Opening it claims a session nobody owns yet; a watcher whose share is removed gets an `error` event
        (code `not_found`) at the next change, and the stream ends.
        """
        check_session_id(session_id)
        requested = _requested(request.headers.get("last-event-id"), since)
        store, who = graph(), principal(request)
        grant = await store.claim(session_id, who)
        grant.check(who, "read")
        cursor, notices = await _starting_point(store, session_id, requested)
        follow = store.follow(session_id, cursor, server.settings.graph.stream_poll_secs)
        changes: AsyncIterator[Any] = follow
        if grant.owner_id != who.user_id and not who.is_admin:  # a share can be taken back: check each change
            changes = _while_visible(follow, lambda: _can_read(store, session_id, who), missing(session_id))
        keepalive = server.settings.server.sse_keepalive_secs
        # Says where the stream starts; its `id:` lets a client that sees no change before a drop resume from here.
        opening = ServerSentEventMessage(
            event="open", id=str(cursor), data=json.dumps({"session_id": session_id, "after": cursor})
        )
        return ServerSentEvent(_sse(changes, server.stopping, keepalive, [opening, *notices]))

    @post("/bootstrap", operation_id="Bootstrap", tags=["graph"], status_code=201, responses=BOOTSTRAP)
    async def run_bootstrap(
        request: Request, data: JSONBody[BootstrapIn | None] = None
    ) -> Response[BootstrapOut]:
        """Index the configured repository into a session's graph; a re-run updates it instead of duplicating."""
        session_id = check_session_id((data or BootstrapIn()).session_id)
        who = principal(request)
        (await graph().claim(session_id, who)).check(who, "write")  # before the (slow) scan
        root = server.settings.graph.bootstrap_root or Path.cwd()
        plan = await asyncio.to_thread(bootstrap.scan_repository, root)
        result = await graph().apply_plan(session_id, plan, who)
        return Response(BootstrapOut(**result.as_dict()), status_code=201 if result.nodes_created else 200)

    return [stream, run_bootstrap]


def _node(node: Node) -> NodeOut:
    return NodeOut(**node.as_dict())


def _edge(edge: Edge) -> EdgeOut:
    return EdgeOut(**edge.as_dict())


def _requested(header: str | None, since: str | None) -> int | None:
    """The changelog id to resume after: `Last-Event-ID` (a reconnecting EventSource) wins over `since`."""
    return _change_id(header, "Last-Event-ID") if header else _change_id(since, "since")


async def _starting_point(
    store: GraphStore, session_id: str, requested: int | None
) -> tuple[int, list[ServerSentEventMessage]]:
    """Where a stream starts, and a `reset` notice when it cannot start where asked (pruned, or ahead).

    A new watcher starts after the session's own newest change (see `Changelog.latest_change_id`)."""
    if requested is None:
        return await store.latest_change_id(session_id), []
    latest = await store.latest_change_id()
    if requested < (pruned := await store.pruned_through()):
        return pruned, [_reset("history_pruned", f"changes up to {pruned} were pruned", pruned)]
    if requested > latest:
        return latest, [_reset("cursor_ahead", f"this server's newest change is {latest}", latest)]
    return requested, []


def _change_id(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    return parse_whole_number(value.strip(), f"{name} (a changelog id)")


async def _can_read(store: GraphStore, session_id: str, who: Principal) -> bool:
    return (await store.grant(session_id, who)).level != "none"


async def _while_visible(
    changes: AsyncGenerator[Change, None], visible: Callable[[], Awaitable[bool]], gone: NotFoundError
) -> AsyncGenerator[Change | ServerSentEventMessage, None]:
    """The changes, until the watcher may no longer read the session: then an `error` event, and the end."""
    async with contextlib.aclosing(changes):
        async for change in changes:
            if not await visible():
                body = {"error": gone.message, "code": gone.code}
                yield ServerSentEventMessage(event="error", data=json.dumps(body))
                return
            yield change


def _reset(code: str, message: str, resume_after: int) -> ServerSentEventMessage:
    body = {"code": code, "message": f"{message}; continuing after change {resume_after}"}
    return ServerSentEventMessage(event="reset", data=json.dumps({**body, "resume_after": resume_after}))


async def _sse(
    changes: AsyncIterator[Any],
    stopping: asyncio.Event,
    keepalive: float,
    first: list[ServerSentEventMessage],
) -> AsyncIterator[ServerSentEventMessage]:
    for message in first:
        yield message
    async for item in relay(changes, stopping, keepalive):
        if item is KEEPALIVE:
            yield keepalive_comment()
        elif item is STOPPING:
            yield shutting_down(event="error")
        elif isinstance(item, ServerSentEventMessage):  # the last word: access was taken back
            yield item
            return
        else:
            yield ServerSentEventMessage(data=json.dumps(item.as_dict()), id=str(item.id))
