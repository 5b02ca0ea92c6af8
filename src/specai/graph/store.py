"""The knowledge graph: nodes and edges per session, each write logged to a changelog that watchers follow."""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from sqlalchemy import Row, Select, delete, func, insert, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.agents.sessions import check_session_id
from specai.errors import (
    InvalidNodeTypeError,
    InvalidRequestError,
    NotFoundError,
    UnprocessableError,
    VersionConflictError,
)
from specai.graph.access import Grant, GraphAccess, Level, SessionEntry, ShareEntry
from specai.graph.feed import ChangeFeed, ChangeNotifier
from specai.ids import is_ascii_number
from specai.store import Store
from specai.store.engine import insert_ignore
from specai.store.locks import GRAPH_SESSION_LOCK
from specai.store.schema import graph_changelog, graph_changelog_state, graph_edges, graph_nodes
from specai.store.types import utcnow
from specai.users.access import Principal

NODE_TYPES = ("entity", "concept", "fact", "message", "tool_result", "event", "goal")
EDGE_TYPES = (
    "RELATES_TO",
    "CAUSED_BY",
    "PART_OF",
    "MENTIONS",
    "FOLLOWS_FROM",
    "USES",
    "PRODUCES",
    "DEPENDS_ON",
)
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_LABEL_LENGTH = 10_000
MAX_EDGE_TYPE_LENGTH = 64
CHANGE_BATCH = 500
_EDGE_TYPE = re.compile(r"[A-Z][A-Z0-9_]*")
MAX_ID = 2**63 - 1  # ids are 64-bit; a larger number names nothing

T = TypeVar("T")


# --- values ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """A node as stored; `uid` is global and `version` counts its writes (1 when created)."""

    id: int
    uid: str
    version: int
    session_id: str
    node_type: str
    label: str
    properties: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        """The wire shape (the original's NodeResponse plus `uid` and `version`)."""
        return {
            "id": self.id,
            "uid": self.uid,
            "version": self.version,
            "session_id": self.session_id,
            "node_type": self.node_type,
            "label": self.label,
            "properties": self.properties,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Edge:
    """A directed, typed edge between two nodes of the same session."""

    id: int
    uid: str
    version: int
    session_id: str
    source_id: int
    target_id: int
    edge_type: str
    predicate: str | None
    properties: dict[str, Any] | None
    weight: float
    created_at: dt.datetime
    updated_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        """The wire shape (the original's EdgeResponse plus `uid`, `version` and `updated_at`)."""
        return {
            "id": self.id,
            "uid": self.uid,
            "version": self.version,
            "session_id": self.session_id,
            "source_id": self.source_id,
            "target_id": self.target_id,
            "edge_type": self.edge_type,
            "predicate": self.predicate,
            "properties": self.properties,
            "weight": self.weight,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Change:
    """One changelog row: what happened to which entity, with a snapshot of it (before a delete, after otherwise)."""

    id: int
    session_id: str
    entity_type: str
    entity_id: int
    entity_uid: str
    operation: str
    version: int
    data: dict[str, Any] | None
    created_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        """The change-stream event body (the original's keys plus `id`, `entity_uid` and `version`)."""
        return {
            "id": self.id,
            "session_id": self.session_id,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "entity_uid": self.entity_uid,
            "operation": self.operation,
            "version": self.version,
            "timestamp": self.created_at.isoformat(),
            "data": self.data,
        }


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, newest first; `next_cursor` fetches the following page (None on the last)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class PlannedNode:
    """A node bootstrap wants to exist, found again on later runs by `key`."""

    key: str
    node_type: str
    label: str
    properties: dict[str, Any]


@dataclass(frozen=True)
class PlannedEdge:
    """An edge between two planned nodes (by key)."""

    source: str
    target: str
    edge_type: str
    predicate: str | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class GraphPlan:
    """A whole generated graph (bootstrap): nodes by key, the root's key, and the edges between them."""

    root: str
    nodes: Sequence[PlannedNode]
    edges: Sequence[PlannedEdge]
    source: str  # written as `bootstrap_source` so a re-run recognises (and only touches) its own nodes


@dataclass(frozen=True)
class PlanResult:
    """What applying a plan did."""

    session_id: str
    root_node_id: int | None
    nodes_created: int = 0
    nodes_updated: int = 0
    nodes_removed: int = 0
    edges_created: int = 0
    edges_removed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The /bootstrap body."""
        return dict(self.__dict__)


# --- validation --------------------------------------------------------------------------------------------------


def check_node_type(value: Any) -> str:
    """The lower-cased node type, or InvalidNodeTypeError naming the valid ones."""
    kind = value.strip().lower() if isinstance(value, str) else value
    if kind not in NODE_TYPES:
        raise InvalidNodeTypeError(
            f"unknown node_type {value!r}; valid types: {', '.join(NODE_TYPES)}",
            details={"valid": list(NODE_TYPES)},
        )
    return str(kind)


def check_edge_type(value: Any) -> str:
    """The upper-cased edge type: a built-in one or a custom NAME of letters, digits and underscores."""
    kind = value.strip().upper() if isinstance(value, str) else None
    if not kind or len(kind) > MAX_EDGE_TYPE_LENGTH or not _EDGE_TYPE.fullmatch(kind):
        raise UnprocessableError(
            f"edge_type {value!r} must be a built-in type ({', '.join(EDGE_TYPES)}) or a custom name of letters, "
            f"digits and underscores starting with a letter, at most {MAX_EDGE_TYPE_LENGTH} characters",
            details={"builtin": list(EDGE_TYPES)},
        )
    return kind


def check_properties(value: Any, *, nullable: bool = False) -> dict[str, Any] | None:
    """A JSON object (or None where allowed)."""
    if value is None and nullable:
        return None
    if not isinstance(value, dict):
        raise UnprocessableError(f"properties must be a JSON object, got {_json_kind(value)}")
    return value


def check_weight(value: Any) -> float:
    """A number from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnprocessableError(f"weight must be a number from 0 to 1, got {value!r}")
    if not 0 <= value <= 1:
        raise UnprocessableError(f"weight must be from 0 to 1, got {value!r}")
    return float(value)


def check_label(value: Any) -> str:
    """A string of at most MAX_LABEL_LENGTH characters (empty is allowed, as in the original)."""
    if len(check_text(value, "label")) > MAX_LABEL_LENGTH:
        raise UnprocessableError(f"label is longer than {MAX_LABEL_LENGTH} characters")
    return value


def check_text(value: Any, name: str) -> str:
    """A string without NUL characters (PostgreSQL text cannot hold them)."""
    if not isinstance(value, str):
        raise UnprocessableError(f"{name} must be a string, got {_json_kind(value)}")
    if "\x00" in value:
        raise UnprocessableError(f"{name} must not contain NUL characters")
    return value


def check_id(value: int, name: str) -> int:
    """An id filter within 64 bits, or InvalidRequestError."""
    if not 0 <= value <= MAX_ID:
        raise InvalidRequestError(f"{name} must be from 0 to {MAX_ID}, got {value}")
    return value


def check_limit(limit: int) -> int:
    """1 to MAX_LIMIT."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be from 1 to {MAX_LIMIT}, got {limit}")
    return limit


def parse_cursor(cursor: str | None) -> int | None:
    """A cursor from a previous page (the id to continue below), or InvalidRequestError."""
    if cursor is None or cursor == "":
        return None
    if not is_ascii_number(cursor) or len(cursor) > 19 or int(cursor) > MAX_ID:  # isdigit() takes "1²"
        raise InvalidRequestError(f"cursor {cursor!r} is not one this server returned")
    return int(cursor)


def _json_kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# Built once: the statements of every write, compiled once per engine (SQLAlchemy caches them by shape).
_INSERT_NODE = insert(graph_nodes).returning(graph_nodes.c.id)
_INSERT_EDGE = insert(graph_edges).returning(graph_edges.c.id)
_LOG_CHANGE = insert(graph_changelog)


# --- the store ----------------------------------------------------------------------------------------------------


@dataclass
class _Write:
    """One graph write transaction: its connection, session and clock."""

    conn: AsyncConnection
    session_id: str
    owner_id: str | None = None
    now: dt.datetime = field(default_factory=utcnow)

    def new_entity(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The columns of a new node or edge: `fields` plus a fresh uid, the session, version 1 and timestamps."""
        return {
            "uid": str(uuid.uuid4()),
            "session_id": self.session_id,
            **fields,
            "version": 1,
            "created_at": self.now,
            "updated_at": self.now,
        }

    async def log(self, kind: str, operation: str, entity: Node | Edge) -> None:
        await self.conn.execute(
            _LOG_CHANGE,
            {
                "session_id": entity.session_id,
                "entity_type": kind,
                "entity_id": entity.id,
                "entity_uid": entity.uid,
                "operation": operation,
                "version": entity.version,
                "data": entity.as_dict(),
                "created_at": self.now,
            },
        )


class GraphStore:
    """Graph reads and writes; every write and its changelog rows commit in one transaction."""

    def __init__(
        self, store: Store, notifier: ChangeNotifier | None = None, *, max_nodes_per_account: int = 0
    ) -> None:
        self.store = store
        self.notifier = notifier or ChangeNotifier()
        self.access = GraphAccess(max_nodes_per_account)
        self._feed: ChangeFeed[Change] = ChangeFeed(self.changes, self.latest_change_id, self.notifier)

    @asynccontextmanager
    async def _write(
        self,
        session_id: str,
        who: Principal | None = None,
        *,
        claim: bool = False,
        missing_error: NotFoundError | None = None,
    ) -> AsyncIterator[_Write]:
        """A write transaction for one session, as `who` (None: trusted code); watchers are woken after commit.

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
            yield _Write(conn, session_id, owner_id)
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
        async with self._write(session_id, who, claim=True) as tx:
            await self.access.check_quota(tx.conn, tx.owner_id, 1)
            return await self._insert_node(tx, kind, label, props or {})

    async def _insert_node(self, tx: _Write, kind: str, label: str, props: dict[str, Any]) -> Node:
        values = tx.new_entity({"node_type": kind, "label": label, "properties": props})
        node = Node(id=int(await tx.conn.scalar(_INSERT_NODE, values) or 0), **values)
        await tx.log("node", "create", node)
        return node

    async def get_node(self, node_id: int, who: Principal | None = None) -> Node:
        """One node, or NotFoundError (also when `who` may not see its session)."""
        async with self.store.connect() as conn:
            node = await _node_or_404(conn, node_id)
            await self._check(conn, node.session_id, who, "read", _missing("node", node_id))
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
        rows, next_cursor = await self._page(query, graph_nodes.c.id, limit, cursor)
        return Page([_node(row) for row in rows], next_cursor)

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
            pattern = f"%{_escape_like(words.strip().lower())}%"
            query = query.where(
                or_(
                    func.lower(graph_nodes.c.label).like(pattern, escape="\\"),
                    func.lower(graph_nodes.c.properties).like(pattern, escape="\\"),
                )
            )
        rows, _ = await self._page(query, graph_nodes.c.id, check_limit(limit), None)
        return [_node(row) for row in rows]

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
        session_id = await self._session_of(graph_nodes, node_id, "node")
        async with self._write(session_id, who, missing_error=_missing("node", node_id)) as tx:
            current = await _node_or_404(tx.conn, node_id)
            _check_version("node", current.id, current.version, expected_version)
            props = properties if properties is not None else current.properties
            if merge is not None:
                props = _merged(current.properties, merge)
            new_label = current.label if label is None else label
            return await self._rewrite_node(tx, current, current.node_type, new_label, props)

    async def delete_node(self, node_id: int, who: Principal | None = None) -> int:
        """Delete a node and every edge touching it in one transaction; returns how many edges went with it."""
        session_id = await self._session_of(graph_nodes, node_id, "node")
        async with self._write(session_id, who, missing_error=_missing("node", node_id)) as tx:
            return await self._remove_node(tx, await _node_or_404(tx.conn, node_id))

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
        async with self._write(session_id, who, claim=True) as tx:
            for end, node_id in (("source", source_id), ("target", target_id)):
                await self._check_end(tx, end, node_id, who)
            return await self._insert_edge(tx, source_id, target_id, kind, predicate, props, checked_weight)

    async def _check_end(self, tx: _Write, end: str, node_id: int, who: Principal | None) -> None:
        """An edge's end must be a node of its session: 404 if missing (or invisible to `who`), 422 elsewhere."""
        gone = NotFoundError(f"{end} node {node_id} not found", details={end + "_id": node_id})
        found = await _find(tx.conn, graph_nodes.c.session_id, node_id)
        if found is None:
            raise gone
        if found != tx.session_id:
            if who is not None:
                await self.access.require(tx.conn, str(found), who, "read", missing_error=gone)
            raise UnprocessableError(
                f"{end} node {node_id} belongs to another session; an edge must join two nodes of its own session"
            )

    async def _insert_edge(
        self,
        tx: _Write,
        source_id: int,
        target_id: int,
        kind: str,
        predicate: str | None,
        props: dict[str, Any] | None,
        weight: float,
    ) -> Edge:
        values = tx.new_entity(
            {
                "source_id": source_id,
                "target_id": target_id,
                "edge_type": kind,
                "predicate": predicate,
                "properties": props,
                "weight": weight,
            }
        )
        edge = Edge(id=int(await tx.conn.scalar(_INSERT_EDGE, values) or 0), **values)
        await tx.log("edge", "create", edge)
        return edge

    async def get_edge(self, edge_id: int, who: Principal | None = None) -> Edge:
        """One edge, or NotFoundError (also when `who` may not see its session)."""
        async with self.store.connect() as conn:
            edge = await _edge_or_404(conn, edge_id)
            await self._check(conn, edge.session_id, who, "read", _missing("edge", edge_id))
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
            query = query.where(graph_edges.c.source_id == check_id(source_id, "source_id"))
        if target_id is not None:
            query = query.where(graph_edges.c.target_id == check_id(target_id, "target_id"))
        if edge_type is not None:
            query = query.where(graph_edges.c.edge_type == check_edge_type(edge_type))
        rows, next_cursor = await self._page(query, graph_edges.c.id, limit, cursor)
        return Page([_edge(row) for row in rows], next_cursor)

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
        session_id = await self._session_of(graph_edges, edge_id, "edge")
        async with self._write(session_id, who, missing_error=_missing("edge", edge_id)) as tx:
            current = await _edge_or_404(tx.conn, edge_id)
            _check_version("edge", current.id, current.version, expected_version)
            props = current.properties
            if merge is not None:
                props = _merged(current.properties or {}, merge)
            return await self._rewrite_edge(
                tx,
                current,
                current.predicate if predicate is None else predicate,
                props,
                current.weight if new_weight is None else new_weight,
            )

    async def _rewrite_edge(
        self, tx: _Write, current: Edge, predicate: str | None, props: dict[str, Any] | None, weight: float
    ) -> Edge:
        """Store an edge's new predicate, properties and weight as its next version, and log the update."""
        changed = replace(
            current,
            predicate=predicate,
            properties=props,
            weight=weight,
            version=current.version + 1,
            updated_at=tx.now,
        )
        await tx.conn.execute(
            update(graph_edges)
            .where(graph_edges.c.id == current.id)
            .values(
                predicate=predicate,
                properties=props,
                weight=weight,
                version=changed.version,
                updated_at=tx.now,
            )
        )
        await tx.log("edge", "update", changed)
        return changed

    async def delete_edge(self, edge_id: int, who: Principal | None = None) -> None:
        """Delete one edge, or NotFoundError."""
        session_id = await self._session_of(graph_edges, edge_id, "edge")
        async with self._write(session_id, who, missing_error=_missing("edge", edge_id)) as tx:
            edge = await _edge_or_404(tx.conn, edge_id)
            await tx.conn.execute(delete(graph_edges).where(graph_edges.c.id == edge_id))
            await tx.log("edge", "delete", edge)

    # --- changelog ---------------------------------------------------------------------------------------------

    async def changes(self, session_id: str, after: int, limit: int = CHANGE_BATCH) -> list[Change]:
        """The session's changes with an id above `after`, oldest first."""
        query = (
            select(graph_changelog)
            .where(graph_changelog.c.session_id == session_id, graph_changelog.c.id > after)
            .order_by(graph_changelog.c.id)
            .limit(limit)
        )
        async with self.store.connect() as conn:
            return [_change(row) for row in (await conn.execute(query)).all()]

    async def latest_change_id(self) -> int:
        """The newest changelog id of any session (0 when there is none): "now" for a new watcher."""
        async with self.store.connect() as conn:
            newest = await conn.scalar(select(func.max(graph_changelog.c.id)))
            return max(int(newest or 0), await _pruned_through(conn))

    async def pruned_through(self) -> int:
        """The newest changelog id removed by retention (0 when nothing was pruned)."""
        async with self.store.connect() as conn:
            return await _pruned_through(conn)

    async def prune(self, older_than: dt.timedelta) -> int:
        """Delete changelog rows older than `older_than`; returns how many went."""
        cutoff = utcnow() - older_than
        async with self.store.transaction() as conn:
            newest_old = await conn.scalar(
                select(func.max(graph_changelog.c.id)).where(graph_changelog.c.created_at < cutoff)
            )
            if newest_old is None:
                return 0
            result = await conn.execute(delete(graph_changelog).where(graph_changelog.c.id <= newest_old))
            through = max(await _pruned_through(conn), int(newest_old))
            await conn.execute(
                insert_ignore(conn, graph_changelog_state, "id").values(id=1, pruned_through=0)
            )
            await conn.execute(
                update(graph_changelog_state)
                .where(graph_changelog_state.c.id == 1)
                .values(pruned_through=through)
            )
            return int(result.rowcount or 0)

    def follow(self, session_id: str, after: int, poll_secs: float) -> AsyncGenerator[Change, None]:
        """Every change of the session after `after`, forever: at once after a local commit, else by polling.

        Polling every `poll_secs` only matters for writes from other processes sharing the database.
        """
        return self._feed.follow(session_id, after, poll_secs)

    # --- generated graphs (bootstrap) ----------------------------------------------------------------------------

    async def apply_plan(self, session_id: str, plan: GraphPlan, who: Principal | None = None) -> PlanResult:
        """Make the session's nodes from `plan.source` match the plan, in one transaction.

        Nodes are matched by `properties.bootstrap_key`: matching ones are updated when they differ, missing ones
        are created, and ones the plan no longer has are deleted with their edges; other nodes are not touched.
        """
        session_id = check_session_id(session_id)
        _check_plan(plan)
        counts = {
            "nodes_created": 0,
            "nodes_updated": 0,
            "nodes_removed": 0,
            "edges_created": 0,
            "edges_removed": 0,
        }
        async with self._write(session_id, who, claim=True) as tx:
            rows = (
                await tx.conn.execute(select(graph_nodes).where(graph_nodes.c.session_id == session_id))
            ).all()
            existing = {
                node.properties.get("bootstrap_key"): node
                for node in map(_node, rows)
                if node.properties.get("bootstrap_source") == plan.source
            }
            adding = sum(1 for planned in plan.nodes if planned.key not in existing)
            await self.access.check_quota(tx.conn, tx.owner_id, adding)
            ids: dict[str, int] = {}
            for planned in plan.nodes:
                props = {**planned.properties, "bootstrap_source": plan.source, "bootstrap_key": planned.key}
                current = existing.pop(planned.key, None)
                if current is None:
                    node = await self._insert_node(tx, planned.node_type, planned.label, props)
                    counts["nodes_created"] += 1
                else:
                    node = current
                    if (current.node_type, current.label, current.properties) != (
                        planned.node_type,
                        planned.label,
                        props,
                    ):
                        node = await self._rewrite_node(tx, current, planned.node_type, planned.label, props)
                        counts["nodes_updated"] += 1
                ids[planned.key] = node.id
            for stale in existing.values():
                counts["edges_removed"] += await self._remove_node(tx, stale)
                counts["nodes_removed"] += 1
            counts["edges_created"], removed = await self._sync_edges(tx, plan, ids)
            counts["edges_removed"] += removed
        return PlanResult(session_id, ids.get(plan.root), **counts)

    async def _rewrite_node(
        self, tx: _Write, current: Node, kind: str, label: str, props: dict[str, Any]
    ) -> Node:
        """Store a node's new type, label and properties as its next version, and log the update."""
        changed = replace(
            current,
            node_type=kind,
            label=label,
            properties=props,
            version=current.version + 1,
            updated_at=tx.now,
        )
        await tx.conn.execute(
            update(graph_nodes)
            .where(graph_nodes.c.id == current.id)
            .values(node_type=kind, label=label, properties=props, version=changed.version, updated_at=tx.now)
        )
        await tx.log("node", "update", changed)
        return changed

    async def _remove_node(self, tx: _Write, node: Node) -> int:
        """Delete a node and its edges, logging each edge's delete before the node's; returns the edge count."""
        touching = (
            await tx.conn.execute(
                select(graph_edges)
                .where(or_(graph_edges.c.source_id == node.id, graph_edges.c.target_id == node.id))
                .order_by(graph_edges.c.id)
            )
        ).all()
        for row in touching:
            await tx.log("edge", "delete", _edge(row))
        if touching:
            await tx.conn.execute(delete(graph_edges).where(graph_edges.c.id.in_([r.id for r in touching])))
        await tx.conn.execute(delete(graph_nodes).where(graph_nodes.c.id == node.id))
        await tx.log("node", "delete", node)
        return len(touching)

    async def _sync_edges(self, tx: _Write, plan: GraphPlan, ids: Mapping[str, int]) -> tuple[int, int]:
        """Create the plan's missing edges, update changed ones, drop ones between planned nodes it no longer has."""
        planned_ids = set(ids.values())
        rows = (
            await tx.conn.execute(
                select(graph_edges).where(
                    graph_edges.c.session_id == tx.session_id,
                    graph_edges.c.source_id.in_(planned_ids),
                    graph_edges.c.target_id.in_(planned_ids),
                )
            )
        ).all()
        existing = {(row.source_id, row.target_id, row.edge_type): _edge(row) for row in rows}
        created = 0
        wanted: set[tuple[int, int, str]] = set()
        props = {"bootstrap_source": plan.source}
        for planned in plan.edges:
            kind = check_edge_type(planned.edge_type)
            key = (ids[planned.source], ids[planned.target], kind)
            if key in wanted:
                continue
            wanted.add(key)
            weight = check_weight(planned.weight)
            current = existing.get(key)
            if current is None:
                await self._insert_edge(tx, key[0], key[1], kind, planned.predicate, props, weight)
                created += 1
            elif (current.predicate, current.weight) != (planned.predicate, weight):
                await self._rewrite_edge(tx, current, planned.predicate, current.properties, weight)
        removed = 0
        for key, edge in existing.items():
            if key not in wanted and (edge.properties or {}).get("bootstrap_source") == plan.source:
                await tx.conn.execute(delete(graph_edges).where(graph_edges.c.id == edge.id))
                await tx.log("edge", "delete", edge)
                removed += 1
        return created, removed

    # --- helpers -----------------------------------------------------------------------------------------------

    async def _session_of(self, table: Any, entity_id: int, kind: str) -> str:
        async with self.store.connect() as conn:
            found = await _find(conn, table.c.session_id, entity_id)
        if found is None:
            raise _missing(kind, entity_id)
        return str(found)

    async def _page(
        self, query: Select[Any], id_column: Any, limit: int, cursor: str | None
    ) -> tuple[Sequence[Row[Any]], str | None]:
        check_limit(limit)
        below = parse_cursor(cursor)
        if below is not None:
            query = query.where(id_column < below)
        async with self.store.connect() as conn:
            rows = (await conn.execute(query.order_by(id_column.desc()).limit(limit + 1))).all()
        if len(rows) > limit:
            return rows[:limit], str(rows[limit - 1].id)
        return rows, None


def _missing(kind: str, entity_id: int) -> NotFoundError:
    """A node or edge that does not exist, or that the caller may not see: one message for both."""
    return NotFoundError(f"{kind} {entity_id} not found")


def _merged(properties: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """PATCH semantics: `changes` overwrite `properties`, and a key set to null is removed."""
    return {key: value for key, value in {**properties, **changes}.items() if value is not None}


def _check_plan(plan: GraphPlan) -> None:
    """A plan is built by code, not users: a bad one is a bug, reported before anything is written."""
    keys = [planned.key for planned in plan.nodes]
    if len(set(keys)) != len(keys):
        raise ValueError("graph plan: node keys must be unique")
    if plan.root not in keys:
        raise ValueError(f"graph plan: root {plan.root!r} is not one of its nodes")
    for planned in plan.nodes:
        check_node_type(planned.node_type)
        check_label(planned.label)
        check_properties(planned.properties)
    for edge in plan.edges:
        if edge.source not in keys or edge.target not in keys:
            raise ValueError(
                f"graph plan: edge {edge.source!r} -> {edge.target!r} names a node it does not have"
            )


def _check_version(kind: str, entity_id: int, current: int, expected: int | None) -> None:
    if expected is not None and expected != current:
        raise VersionConflictError(
            f"{kind} {entity_id} is at version {current}, not {expected}: it changed since you read it; "
            "read it again and retry",
            details={"current_version": current},
        )


async def _find(conn: AsyncConnection, column: Any, entity_id: int) -> Any:
    """One column of the row with this id (None when there is none, or the id is beyond 64 bits)."""
    if not 0 <= entity_id <= MAX_ID:
        return None
    return await conn.scalar(select(column).where(column.table.c.id == entity_id))


async def _row(conn: AsyncConnection, table: Any, entity_id: int) -> Row[Any] | None:
    if not 0 <= entity_id <= MAX_ID:
        return None
    return (await conn.execute(select(table).where(table.c.id == entity_id))).first()


async def _node_or_404(conn: AsyncConnection, node_id: int) -> Node:
    row = await _row(conn, graph_nodes, node_id)
    if row is None:
        raise _missing("node", node_id)
    return _node(row)


async def _edge_or_404(conn: AsyncConnection, edge_id: int) -> Edge:
    row = await _row(conn, graph_edges, edge_id)
    if row is None:
        raise _missing("edge", edge_id)
    return _edge(row)


async def _pruned_through(conn: AsyncConnection) -> int:
    found = await conn.scalar(
        select(graph_changelog_state.c.pruned_through).where(graph_changelog_state.c.id == 1)
    )
    return int(found or 0)


def _node(row: Row[Any]) -> Node:
    return Node(**row._mapping)  # the table's columns are exactly the dataclass's fields


def _edge(row: Row[Any]) -> Edge:
    return Edge(**row._mapping)


def _change(row: Row[Any]) -> Change:
    return Change(**row._mapping)


def _escape_like(words: str) -> str:
    return words.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
