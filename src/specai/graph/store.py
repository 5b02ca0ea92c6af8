"""The knowledge graph: nodes and edges per session, each write logged to a changelog that watchers follow."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.errors import NotFoundError, UnprocessableError
from specai.graph.access import Grant, GraphAccess, Level, SessionEntry, ShareEntry
from specai.graph.changelog import CHANGE_BATCH, Changelog
from specai.graph.feed import ChangeFeed, ChangeNotifier, Notifier
from specai.graph.model import Change, Edge, GraphPlan, Node, Page, PlanResult
from specai.graph.plan import apply_plan
from specai.graph.rows import containing, edge_or_404, find, missing, node_or_404, page, session_of
from specai.graph.sync.recorder import SyncRecorder
from specai.graph.validate import (
    DEFAULT_LIMIT,
    check_edge_type,
    check_label,
    check_node_type,
    check_plan,
    check_properties,
    check_text,
    check_version,
    check_weight,
)
from specai.graph.write import GraphWrite
from specai.ids import check_node_id, check_session_id
from specai.store import Store
from specai.store.lease import Fence
from specai.store.locks import GRAPH_SESSION_LOCK
from specai.store.schema import graph_edges, graph_nodes
from specai.users.access import Principal


class GraphStore:
    """Graph reads and writes; every write and its changelog rows commit in one transaction."""

    def __init__(
        self,
        store: Store,
        notifier: Notifier | None = None,
        *,
        max_nodes_per_account: int = 0,
        recorder: SyncRecorder | None = None,
    ) -> None:
        self.store = store
        self.recorder = recorder  # logs writes to synced sessions as changes for the other mesh members
        self.notifier = notifier or ChangeNotifier()
        self.access = GraphAccess(max_nodes_per_account)
        self.changelog = Changelog(store)
        self._feed: ChangeFeed[Change] = ChangeFeed(self.changes, self.latest_change_id, self.notifier)

    @asynccontextmanager
    async def write(
        self,
        session_id: str,
        who: Principal | None = None,
        *,
        claim: bool = False,
        missing_error: NotFoundError | None = None,
        synced: bool = False,
    ) -> AsyncIterator[GraphWrite]:
        """A write transaction for one session, as `who` (None: trusted code); watchers are woken after commit.

        `synced` marks the write of changes that came from another member: they are not logged again (no echo).

        On PostgreSQL a per-session lock, held until commit, makes changelog ids of a session commit in
        increasing order, so a watcher's `id > cursor` never skips a row committed late.
        (SQLite already has one writer at a time.) With `claim`, a session nobody owns becomes `who`'s.
        """
        async with self.store.transaction() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key, hashtext(:session))"),
                    {"key": GRAPH_SESSION_LOCK, "session": session_id},
                )
            if who is None:
                owner_id = await self.access.owner(conn, session_id)
            else:
                grant = await self.access.require(
                    conn, session_id, who, "write", claim=claim, missing_error=missing_error
                )
                owner_id = grant.owner_id
            recorder = self.recorder
            if recorder is not None and (synced or not await recorder.enabled(conn, session_id)):
                recorder = None
            yield GraphWrite(conn, session_id, owner_id, sync=recorder)
        self.notifier.notify(session_id)

    async def _check(
        self,
        conn: AsyncConnection,
        session_id: str,
        who: Principal | None,
        need: Level,
        missing_error: NotFoundError,
    ) -> None:
        """For an entity found by id: 404 (`missing_error`) unless `who` may see its session, 403 if read-only."""
        if who is not None:
            await self.access.require(conn, session_id, who, need, missing_error=missing_error)

    async def _listable(self, session_id: str, who: Principal | None, *, claim: bool = False) -> bool:
        """True when `who` may read the session; False when nobody owns it yet (it reads as empty); else 404."""
        if who is None:
            return True
        grant = await (self.claim(session_id, who) if claim else self.grant(session_id, who))
        if grant.unclaimed and grant.level == "none":
            return False
        grant.check(who, "read")
        return True

    # --- access ------------------------------------------------------------------------------------------------

    async def grant(self, session_id: str, who: Principal) -> Grant:
        """What `who` may do to the session now."""
        async with self.store.connect() as conn:
            return await self.access.grant(conn, session_id, who)

    async def claim(self, session_id: str, who: Principal) -> Grant:
        """`who`'s access to the session, making them its owner if nobody is yet."""
        if not self.access.needs_claim(session_id):
            return await self.grant(session_id, who)
        async with self.store.transaction() as conn:
            return await self.access.claim(conn, session_id, who)

    async def check_manager(self, session_id: str, who: Principal) -> None:
        """404 (invisible) or 403 (a sharer) unless `who` may manage the session's shares: checked before a
        username is looked up, so strangers learn nothing about either."""
        async with self.store.connect() as conn:
            await self.access.check_manager(conn, check_session_id(session_id), who)

    async def share(
        self, session_id: str, who: Principal, user_id: str, user_name: str, *, writable: bool
    ) -> ShareEntry:
        """Share a session `who` owns (or any, for an admin) with a user, read-only or read-write."""
        async with self.store.transaction() as conn:
            return await self.access.share(
                conn, check_session_id(session_id), who, user_id, user_name, writable
            )

    async def unshare(self, session_id: str, who: Principal, user_id: str, user_name: str) -> None:
        """Stop sharing a session with a user; their open change streams end at the next change."""
        async with self.store.transaction() as conn:
            await self.access.unshare(conn, check_session_id(session_id), who, user_id, user_name)

    async def shares(self, session_id: str, who: Principal) -> tuple[str, list[ShareEntry]]:
        """A session's owner id and who it is shared with."""
        async with self.store.connect() as conn:
            return await self.access.shares(conn, check_session_id(session_id), who)

    async def sessions(self, who: Principal) -> list[SessionEntry]:
        """The sessions `who` owns or that are shared with them."""
        async with self.store.connect() as conn:
            return await self.access.sessions(conn, who)

    # --- nodes -------------------------------------------------------------------------------------------------

    async def create_node(
        self,
        session_id: str,
        node_type: str,
        label: str,
        properties: dict[str, Any] | None = None,
        who: Principal | None = None,
    ) -> Node:
        """Add a node (properties default to `{}`); claims the session for `who` if nobody owns it yet."""
        session_id = check_session_id(session_id)
        kind = check_node_type(node_type)
        label = check_label(label)
        props = check_properties({} if properties is None else properties)
        async with self.write(session_id, who, claim=True) as tx:
            await self.access.check_quota(tx.conn, tx.owner_id, 1)
            return await tx.create_node(kind, label, props or {})

    async def get_node(self, node_id: int, who: Principal | None = None) -> Node:
        """One node, or NotFoundError (also when `who` may not see its session)."""
        async with self.store.connect() as conn:
            node = await node_or_404(conn, node_id)
            await self._check(conn, node.session_id, who, "read", missing("node", node_id))
            return node

    async def list_nodes(
        self,
        session_id: str,
        node_type: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        who: Principal | None = None,
    ) -> Page[Node]:
        """A session's nodes, newest first, optionally of one type."""
        check_session_id(session_id)
        if not await self._listable(session_id, who):
            return Page([], None)
        query = select(graph_nodes).where(graph_nodes.c.session_id == session_id)
        if node_type is not None:
            query = query.where(graph_nodes.c.node_type == check_node_type(node_type))
        rows, next_cursor = await page(self.store, query, graph_nodes.c.id, limit, cursor)
        return Page([Node.from_row(row) for row in rows], next_cursor)

    async def search_nodes(
        self,
        session_id: str,
        words: str,
        node_type: str | None = None,
        limit: int = 20,
        who: Principal | None = None,
        *,
        claim: bool = False,
    ) -> list[Node]:
        """Nodes whose label or properties contain `words` (case-insensitive), newest first."""
        check_session_id(session_id)
        if not await self._listable(session_id, who, claim=claim):
            return []
        query = select(graph_nodes).where(graph_nodes.c.session_id == session_id)
        if node_type is not None:
            query = query.where(graph_nodes.c.node_type == check_node_type(node_type))
        if words.strip():
            query = query.where(containing(words.strip()))
        rows, _ = await page(self.store, query, graph_nodes.c.id, limit, None)
        return [Node.from_row(row) for row in rows]

    async def replace_properties(
        self, node_id: int, properties: Any, expected_version: int | None = None, who: Principal | None = None
    ) -> Node:
        """PUT: replace a node's properties wholesale; VersionConflictError if `expected_version` is stale."""
        props = check_properties(properties)
        return await self._update_node(node_id, expected_version, who, properties=props)

    async def patch_node(
        self,
        node_id: int,
        label: str | None = None,
        properties: Any = None,
        expected_version: int | None = None,
        who: Principal | None = None,
    ) -> Node:
        """PATCH: change the label and/or merge properties (a key set to null is removed)."""
        new_label = None if label is None else check_label(label)
        merge = None if properties is None else check_properties(properties)
        return await self._update_node(node_id, expected_version, who, label=new_label, merge=merge)

    async def _update_node(
        self,
        node_id: int,
        expected_version: int | None,
        who: Principal | None,
        *,
        label: str | None = None,
        properties: dict[str, Any] | None = None,
        merge: dict[str, Any] | None = None,
    ) -> Node:
        session_id = await session_of(self.store, graph_nodes, node_id, "node")
        async with self.write(session_id, who, missing_error=missing("node", node_id)) as tx:
            current = await node_or_404(tx.conn, node_id)
            check_version("node", current.id, current.version, expected_version)
            props = properties if properties is not None else current.properties
            if merge is not None:
                props = _merged(current.properties, merge)
            new_label = current.label if label is None else label
            return await tx.update_node(current, current.node_type, new_label, props)

    async def delete_node(self, node_id: int, who: Principal | None = None) -> int:
        """Delete a node and every edge touching it in one transaction; returns how many edges went with it."""
        session_id = await session_of(self.store, graph_nodes, node_id, "node")
        async with self.write(session_id, who, missing_error=missing("node", node_id)) as tx:
            return await tx.delete_node(await node_or_404(tx.conn, node_id))

    # --- edges -------------------------------------------------------------------------------------------------

    async def create_edge(
        self,
        session_id: str,
        source_id: int,
        target_id: int,
        edge_type: str,
        predicate: str | None = None,
        properties: Any = None,
        weight: Any = 1.0,
        who: Principal | None = None,
    ) -> Edge:
        """Add an edge; both endpoints must exist (404) and belong to `session_id` (422)."""
        session_id = check_session_id(session_id)
        kind = check_edge_type(edge_type)
        props = check_properties(properties, nullable=True)
        checked_weight = check_weight(weight)
        if predicate is not None:
            check_text(predicate, "predicate")
        async with self.write(session_id, who, claim=True) as tx:
            for end, node_id in (("source", source_id), ("target", target_id)):
                await self._check_end(tx, end, node_id, who)
            return await tx.create_edge(source_id, target_id, kind, predicate, props, checked_weight)

    async def _check_end(self, tx: GraphWrite, end: str, node_id: int, who: Principal | None) -> None:
        """An edge's end must be a node of its session: 404 if missing (or invisible to `who`), 422 elsewhere."""
        gone = NotFoundError(f"{end} node {node_id} not found", details={end + "_id": node_id})
        found = await find(tx.conn, graph_nodes.c.session_id, node_id)
        if found is None:
            raise gone
        if found != tx.session_id:
            if who is not None:
                await self.access.require(tx.conn, str(found), who, "read", missing_error=gone)
            raise UnprocessableError(
                f"{end} node {node_id} belongs to another session; an edge must join two nodes of its own session"
            )

    async def get_edge(self, edge_id: int, who: Principal | None = None) -> Edge:
        """One edge, or NotFoundError (also when `who` may not see its session)."""
        async with self.store.connect() as conn:
            edge = await edge_or_404(conn, edge_id)
            await self._check(conn, edge.session_id, who, "read", missing("edge", edge_id))
            return edge

    async def list_edges(
        self,
        session_id: str,
        source_id: int | None = None,
        target_id: int | None = None,
        edge_type: str | None = None,
        limit: int = DEFAULT_LIMIT,
        cursor: str | None = None,
        who: Principal | None = None,
    ) -> Page[Edge]:
        """A session's edges, newest first, filtered by any of source, target and type."""
        check_session_id(session_id)
        if not await self._listable(session_id, who):
            return Page([], None)
        query = select(graph_edges).where(graph_edges.c.session_id == session_id)
        if source_id is not None:
            query = query.where(graph_edges.c.source_id == check_node_id(source_id, "source_id"))
        if target_id is not None:
            query = query.where(graph_edges.c.target_id == check_node_id(target_id, "target_id"))
        if edge_type is not None:
            query = query.where(graph_edges.c.edge_type == check_edge_type(edge_type))
        rows, next_cursor = await page(self.store, query, graph_edges.c.id, limit, cursor)
        return Page([Edge.from_row(row) for row in rows], next_cursor)

    async def patch_edge(
        self,
        edge_id: int,
        predicate: str | None = None,
        properties: Any = None,
        weight: Any = None,
        expected_version: int | None = None,
        who: Principal | None = None,
    ) -> Edge:
        """PATCH: change predicate and/or weight, merge properties (a key set to null is removed)."""
        if predicate is not None:
            check_text(predicate, "predicate")
        merge = None if properties is None else check_properties(properties)
        new_weight = None if weight is None else check_weight(weight)
        session_id = await session_of(self.store, graph_edges, edge_id, "edge")
        async with self.write(session_id, who, missing_error=missing("edge", edge_id)) as tx:
            current = await edge_or_404(tx.conn, edge_id)
            check_version("edge", current.id, current.version, expected_version)
            props = current.properties
            if merge is not None:
                props = _merged(current.properties or {}, merge)
            return await tx.update_edge(
                current,
                current.predicate if predicate is None else predicate,
                props,
                current.weight if new_weight is None else new_weight,
            )

    async def delete_edge(self, edge_id: int, who: Principal | None = None) -> None:
        """Delete one edge, or NotFoundError."""
        session_id = await session_of(self.store, graph_edges, edge_id, "edge")
        async with self.write(session_id, who, missing_error=missing("edge", edge_id)) as tx:
            await tx.delete_edge(await edge_or_404(tx.conn, edge_id))

    # --- changelog ---------------------------------------------------------------------------------------------

    async def changes(self, session_id: str, after: int, limit: int = CHANGE_BATCH) -> list[Change]:
        """The session's changes with an id above `after`, oldest first."""
        return await self.changelog.changes(session_id, after, limit)

    async def latest_change_id(self, session_id: str | None = None) -> int:
        """The newest changelog id of the session, or of any (0 when there is none): "now" for a new watcher."""
        return await self.changelog.latest_change_id(session_id)

    async def pruned_through(self) -> int:
        """The newest changelog id removed by retention (0 when nothing was pruned)."""
        return await self.changelog.pruned_through()

    async def prune(self, older_than: dt.timedelta, fence: Fence | None = None) -> int:
        """Delete changelog rows older than `older_than`; returns how many went (`fence`: see Changelog.prune)."""
        return await self.changelog.prune(older_than, fence)

    def follow(self, session_id: str, after: int, poll_secs: float) -> AsyncGenerator[Change, None]:
        """Every change of the session after `after`, forever: at once after a local commit, else by polling.

        Polling every `poll_secs` only matters for writes from other processes sharing the database.
        """
        return self._feed.follow(session_id, after, poll_secs)

    # --- generated graphs (bootstrap) ----------------------------------------------------------------------------

    async def apply_plan(self, session_id: str, plan: GraphPlan, who: Principal | None = None) -> PlanResult:
        """Make the session's nodes from `plan.source` match the plan, in one transaction (see graph.plan)."""
        session_id = check_session_id(session_id)
        check_plan(plan)
        async with self.write(session_id, who, claim=True) as tx:
            return await apply_plan(tx, plan, self.access)


def _merged(properties: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """PATCH semantics: `changes` overwrite `properties`, and a key set to null is removed."""
    return {key: value for key, value in {**properties, **changes}.items() if value is not None}
