"""Local writes to a synced session become changes: stamped, numbered and logged in the write's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.graph.model import Edge, Node
from specai.graph.sync import journal
from specai.graph.sync.change import ABSENT, PROPERTY, EdgeEnds, Kind, Operation, SyncChange
from specai.graph.sync.hlc import HybridClock
from specai.graph.sync.registers import merge, newest, same, stamp_of, values
from specai.store.schema import graph_nodes, graph_sync_configs


def registers(entity: Node | Edge) -> dict[str, Any]:
    """An entity's fields as registers: its scalar fields and one per top-level property key."""
    if isinstance(entity, Node):
        fields: dict[str, Any] = {"node_type": entity.node_type, "label": entity.label}
    else:
        fields = {"predicate": entity.predicate, "weight": entity.weight}
    fields.update({PROPERTY + key: value for key, value in (entity.properties or {}).items()})
    return fields


@dataclass(frozen=True)
class Write:
    """One local write to log: which registers it set, on top of the entity's current state."""

    kind: Kind
    operation: Operation
    uid: str
    fields: dict[str, Any]
    current: dict[str, Any]
    ends: EdgeEnds | None = None


class SyncRecorder:
    """Turns this member's writes to sync-enabled sessions into logged changes (never remote ones: no echo)."""

    def __init__(self, clock: HybridClock) -> None:
        self.clock = clock

    @property
    def origin(self) -> str:
        """This member's instance id."""
        return self.clock.origin

    async def enabled(self, conn: AsyncConnection, session_id: str) -> bool:
        """Is sync enabled for the session (its one graph)?"""
        found = await conn.scalar(
            select(graph_sync_configs.c.sync_enabled).where(graph_sync_configs.c.session_id == session_id)
        )
        return bool(found)

    async def record(
        self, conn: AsyncConnection, kind: Kind, operation: Operation, entity: Node | Edge
    ) -> SyncChange | None:
        """Log one local write (None when it changed no register)."""
        current = await journal.state(conn, entity.uid)
        before = values(current)
        fields: dict[str, Any] = {}
        if operation == "create":
            fields = registers(entity)
        elif operation == "update":
            after = registers(entity)
            fields = {
                name: value for name, value in after.items() if not same(before.get(name, ABSENT), value)
            }
            fields.update({name: ABSENT for name in before if name not in after})
            if not fields:
                return None
        ends = await self._ends(conn, entity, current) if kind == "edge" else None
        return await self.write(conn, entity.session_id, kind, operation, entity.uid, fields, current, ends)

    async def write(
        self,
        conn: AsyncConnection,
        session_id: str,
        kind: Kind,
        operation: Operation,
        uid: str,
        fields: dict[str, Any],
        current: dict[str, Any],
        ends: EdgeEnds | None,
    ) -> SyncChange:
        """Stamp, number and log one change of this member, and merge it into the entity's state."""
        return (
            await self.write_many(conn, session_id, [Write(kind, operation, uid, fields, current, ends)])
        )[0]

    async def write_many(
        self, conn: AsyncConnection, session_id: str, writes: list[Write]
    ) -> list[SyncChange]:
        """`write` for many entities at once (enabling sync on a big session), numbered in order."""
        if not writes:
            return []
        context = await journal.heads(conn, session_id)
        first = await journal.next_seq(conn, session_id, self.origin, len(writes))
        changes: list[SyncChange] = []
        merged: dict[str, dict[str, Any]] = {}
        for offset, w in enumerate(writes):
            seq = first + offset
            prev = {
                name: stamp_of(w.current["fields"][name]) for name in w.fields if name in w.current["fields"]
            }
            change = SyncChange(
                w.kind,
                w.operation,
                w.uid,
                self.origin,
                seq,
                self.clock.now(after=newest(w.current)),
                {**context, self.origin: seq - 1},
                w.fields,
                prev,
                w.ends,
            )
            merged[w.uid], _ = merge(merged.get(w.uid, w.current), change)
            changes.append(change)
        await journal.save(conn, session_id, {w.uid: w.kind for w in writes}, merged)
        await journal.append(conn, session_id, changes)
        return changes

    async def _ends(self, conn: AsyncConnection, edge: Node | Edge, current: dict[str, Any]) -> EdgeEnds:
        known = current.get("ends")
        if known is not None:
            return EdgeEnds(**known)
        assert isinstance(edge, Edge)
        rows = await conn.execute(
            select(graph_nodes.c.id, graph_nodes.c.uid).where(
                graph_nodes.c.id.in_([edge.source_id, edge.target_id])
            )
        )
        uids = {row.id: row.uid for row in rows}
        return EdgeEnds(uids[edge.source_id], uids[edge.target_id], edge.edge_type)
