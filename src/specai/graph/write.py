"""A graph write transaction and its logged create/update/delete primitives, which graph sync reuses."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.graph.changelog import log_change
from specai.graph.model import Edge, Node
from specai.graph.sync.recorder import SyncRecorder
from specai.store.schema import graph_edges, graph_nodes
from specai.store.types import utcnow

# Built once: the statements of every write, compiled once per engine (SQLAlchemy caches them by shape).
_INSERT_NODE = insert(graph_nodes).returning(graph_nodes.c.id)
_INSERT_EDGE = insert(graph_edges).returning(graph_edges.c.id)


@dataclass
class GraphWrite:
    """One graph write transaction: its connection, session and clock; primitives trust values and access checked."""

    conn: AsyncConnection
    session_id: str
    owner_id: str | None = None
    now: dt.datetime = field(default_factory=utcnow)
    sync: SyncRecorder | None = None  # set when the session is synced: each write also becomes a change

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
        """Log a write of this transaction to the changelog (and, in a synced session, to the sync log)."""
        await log_change(self.conn, kind, operation, entity, self.now)
        if self.sync is not None:
            await self.sync.record(self.conn, kind, operation, entity)  # type: ignore[arg-type]

    async def create_node(self, kind: str, label: str, props: dict[str, Any]) -> Node:
        """Insert a node of this session at version 1, and log its create."""
        values = self.new_entity({"node_type": kind, "label": label, "properties": props})
        node = Node(id=int(await self.conn.scalar(_INSERT_NODE, values) or 0), **values)
        await self.log("node", "create", node)
        return node

    async def update_node(self, current: Node, kind: str, label: str, props: dict[str, Any]) -> Node:
        """Store a node's new type, label and properties as its next version, and log the update."""
        changed = replace(
            current,
            node_type=kind,
            label=label,
            properties=props,
            version=current.version + 1,
            updated_at=self.now,
        )
        await self.conn.execute(
            update(graph_nodes)
            .where(graph_nodes.c.id == current.id)
            .values(
                node_type=kind, label=label, properties=props, version=changed.version, updated_at=self.now
            )
        )
        await self.log("node", "update", changed)
        return changed

    async def delete_node(self, node: Node) -> int:
        """Delete a node and its edges, logging each edge's delete before the node's; returns the edge count."""
        touching = (
            await self.conn.execute(
                select(graph_edges)
                .where(or_(graph_edges.c.source_id == node.id, graph_edges.c.target_id == node.id))
                .order_by(graph_edges.c.id)
            )
        ).all()
        for row in touching:
            await self.log("edge", "delete", Edge.from_row(row))
        if touching:
            await self.conn.execute(delete(graph_edges).where(graph_edges.c.id.in_([r.id for r in touching])))
        await self.conn.execute(delete(graph_nodes).where(graph_nodes.c.id == node.id))
        await self.log("node", "delete", node)
        return len(touching)

    async def create_edge(
        self,
        source_id: int,
        target_id: int,
        kind: str,
        predicate: str | None,
        props: dict[str, Any] | None,
        weight: float,
    ) -> Edge:
        """Insert an edge of this session at version 1, and log its create."""
        values = self.new_entity(
            {
                "source_id": source_id,
                "target_id": target_id,
                "edge_type": kind,
                "predicate": predicate,
                "properties": props,
                "weight": weight,
            }
        )
        edge = Edge(id=int(await self.conn.scalar(_INSERT_EDGE, values) or 0), **values)
        await self.log("edge", "create", edge)
        return edge

    async def update_edge(
        self, current: Edge, predicate: str | None, props: dict[str, Any] | None, weight: float
    ) -> Edge:
        """Store an edge's new predicate, properties and weight as its next version, and log the update."""
        changed = replace(
            current,
            predicate=predicate,
            properties=props,
            weight=weight,
            version=current.version + 1,
            updated_at=self.now,
        )
        await self.conn.execute(
            update(graph_edges)
            .where(graph_edges.c.id == current.id)
            .values(
                predicate=predicate,
                properties=props,
                weight=weight,
                version=changed.version,
                updated_at=self.now,
            )
        )
        await self.log("edge", "update", changed)
        return changed

    async def delete_edge(self, edge: Edge) -> None:
        """Delete one edge, and log its delete."""
        await self.conn.execute(delete(graph_edges).where(graph_edges.c.id == edge.id))
        await self.log("edge", "delete", edge)
