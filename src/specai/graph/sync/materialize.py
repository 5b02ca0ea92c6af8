"""The visible graph follows the merged registers: a node shows while it exists, an edge while it and both its
endpoints exist. Each visible change is one changelog row tagged with the member it came from."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.graph.changelog import log_changes
from specai.graph.model import Edge, Node
from specai.graph.sync import journal
from specai.graph.sync.change import PROPERTY
from specai.graph.sync.registers import State, alive, ends, same, stamp_of, values
from specai.store.schema import graph_edges, graph_nodes


@dataclass
class Shown:
    """What one apply changed in the visible graph."""

    nodes: int = 0
    edges: int = 0
    appeared: list[str] = field(default_factory=list)  # node uids that became visible


def _props(fields: dict[str, Any]) -> dict[str, Any]:
    return {name[len(PROPERTY) :]: value for name, value in fields.items() if name.startswith(PROPERTY)}


def _created_at(entity: State) -> dt.datetime:
    return dt.datetime.fromtimestamp(stamp_of(entity.get("exists"))[0] / 1000, dt.UTC)


class _Rows:
    """The writes of one materialization, sent as a few batched statements (one per kind of write)."""

    def __init__(self, conn: AsyncConnection, table: Any, now: dt.datetime) -> None:
        self.conn, self.table, self.now = conn, table, now
        self.log: list[tuple[str, Node | Edge, str | None]] = []  # changelog rows, in order
        self.deleted: list[int] = []
        self.updates: list[dict[str, Any]] = []
        self.inserts: list[tuple[Node | Edge, str | None]] = []

    async def flush(self, kind: str, columns: Sequence[str]) -> None:
        """Delete, update and insert the collected rows, then log every change, in that order."""
        table, conn = self.table, self.conn
        for start in range(0, len(self.deleted), 500):
            await conn.execute(delete(table).where(table.c.id.in_(self.deleted[start : start + 500])))
        if self.updates:
            await conn.execute(
                update(table)
                .where(table.c.id == bindparam("_id"))
                .values({name: bindparam(name) for name in (*columns, "version", "updated_at")}),
                self.updates,
            )
        created: list[tuple[str, Node | Edge, str | None]] = []
        if self.inserts:
            values = [{k: v for k, v in e.__dict__.items() if k != "id"} for e, _ in self.inserts]
            statement = insert(table).returning(table.c.id, table.c.uid, sort_by_parameter_order=True)
            ids = {row.uid: int(row.id) for row in await conn.execute(statement, values)}
            created = [("create", replace(e, id=ids[e.uid]), origin) for e, origin in self.inserts]
        await log_changes(conn, kind, [*self.log, *created], self.now)


async def show_nodes(
    conn: AsyncConnection, session_id: str, nodes: dict[str, State], origins: dict[str, str], now: dt.datetime
) -> Shown:
    """Make the visible rows of these nodes match their state (edges of a vanishing node go first)."""
    shown = Shown()
    rows = await _rows(conn, graph_nodes, session_id, list(nodes))
    out = _Rows(conn, graph_nodes, now)
    vanishing: dict[int, str | None] = {}
    for uid, entity in nodes.items():
        row, origin = rows.get(uid), origins.get(uid)
        if not alive(entity):
            if row is not None:
                node = Node.from_row(row)
                vanishing[node.id] = origin
                out.deleted.append(node.id)
                out.log.append(("delete", node, origin))
                shown.nodes += 1
            continue
        got = values(entity)
        wanted = {
            "node_type": got.get("node_type", "entity"),
            "label": got.get("label", ""),
            "properties": _props(got),
        }
        if row is None:
            created = _created_at(entity)
            fields = {"uid": uid, "session_id": session_id, **wanted, "version": 1}
            out.inserts.append((Node(id=0, **fields, created_at=created, updated_at=now), origin))
            shown.appeared.append(uid)
            shown.nodes += 1
            continue
        node = Node.from_row(row)
        if not same((node.node_type, node.label, node.properties), tuple(wanted.values())):
            changed = replace(node, **wanted, version=node.version + 1, updated_at=now)
            out.updates.append({"_id": node.id, **wanted, "version": changed.version, "updated_at": now})
            out.log.append(("update", changed, origin))
            shown.nodes += 1
    if vanishing:
        shown.edges += await _hide_edges_of(conn, vanishing, now)
    await out.flush("node", ("node_type", "label", "properties"))
    return shown


async def show_edges(
    conn: AsyncConnection, session_id: str, edges: dict[str, State], origins: dict[str, str], now: dt.datetime
) -> int:
    """Make the visible rows of these edges match their state and their endpoints'; returns rows changed."""
    rows = await _rows(conn, graph_edges, session_id, list(edges))
    endpoints = {e.source_uid for s in edges.values() if (e := ends(s))} | {
        e.target_uid for s in edges.values() if (e := ends(s))
    }
    ids = await _node_ids(conn, session_id, endpoints)
    out = _Rows(conn, graph_edges, now)
    changed_rows = 0
    for uid, entity in edges.items():
        row, origin, fixed = rows.get(uid), origins.get(uid), ends(entity)
        source = ids.get(fixed.source_uid) if fixed else None
        target = ids.get(fixed.target_uid) if fixed else None
        if fixed is None or source is None or target is None or not alive(entity):
            if row is not None:
                out.deleted.append(row.id)
                out.log.append(("delete", Edge.from_row(row), origin))
                changed_rows += 1
            continue
        got = values(entity)
        predicate: str | None = got.get("predicate")
        weight = float(got.get("weight", 1.0))
        props: dict[str, Any] | None = _props(got) or None
        if row is None:
            edge = Edge(
                id=0,
                uid=uid,
                version=1,
                session_id=session_id,
                source_id=source,
                target_id=target,
                edge_type=fixed.edge_type,
                predicate=predicate,
                properties=props,
                weight=weight,
                created_at=_created_at(entity),
                updated_at=now,
            )
            out.inserts.append((edge, origin))
            changed_rows += 1
            continue
        edge = Edge.from_row(row)
        if not same((edge.predicate, edge.weight, edge.properties or None), (predicate, weight, props)):
            after = replace(
                edge,
                predicate=predicate,
                weight=weight,
                properties=props,
                version=edge.version + 1,
                updated_at=now,
            )
            out.updates.append(
                {
                    "_id": edge.id,
                    "predicate": predicate,
                    "weight": weight,
                    "properties": props,
                    "version": after.version,
                    "updated_at": now,
                }
            )
            out.log.append(("update", after, origin))
            changed_rows += 1
    await out.flush("edge", ("predicate", "weight", "properties"))
    return changed_rows


async def edges_to_recheck(conn: AsyncConnection, appeared: Sequence[str]) -> dict[str, State]:
    """Known edges of nodes that just became visible: they may show now."""
    return await journal.edges_touching(conn, appeared) if appeared else {}


async def _hide_edges_of(conn: AsyncConnection, vanishing: dict[int, str | None], now: dt.datetime) -> int:
    """Remove the visible edges of nodes about to vanish (their rows stay in the sync state), logged with the
    origin of the node delete that hid them."""
    node_ids = list(vanishing)
    hidden: list[tuple[str, Node | Edge, str | None]] = []
    seen: set[int] = set()
    for start in range(0, len(node_ids), 500):
        chunk = node_ids[start : start + 500]
        rows = (
            await conn.execute(
                select(graph_edges)
                .where(graph_edges.c.source_id.in_(chunk) | graph_edges.c.target_id.in_(chunk))
                .order_by(graph_edges.c.id)
            )
        ).all()
        for row in rows:
            if row.id not in seen:
                seen.add(row.id)
                origin = vanishing.get(row.source_id, vanishing.get(row.target_id))
                hidden.append(("delete", Edge.from_row(row), origin))
    for start in range(0, len(hidden), 500):
        ids = [entry[1].id for entry in hidden[start : start + 500]]
        await conn.execute(delete(graph_edges).where(graph_edges.c.id.in_(ids)))
    await log_changes(conn, "edge", hidden, now)
    return len(hidden)


async def _rows(conn: AsyncConnection, table: Any, session_id: str, uids: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for start in range(0, len(uids), 500):
        rows = await conn.execute(
            select(table).where(table.c.session_id == session_id, table.c.uid.in_(uids[start : start + 500]))
        )
        found.update((row.uid, row) for row in rows)
    return found


async def _node_ids(conn: AsyncConnection, session_id: str, uids: set[str]) -> dict[str, int]:
    found: dict[str, int] = {}
    ordered = sorted(uids)
    for start in range(0, len(ordered), 500):
        rows = await conn.execute(
            select(graph_nodes.c.uid, graph_nodes.c.id).where(
                graph_nodes.c.session_id == session_id, graph_nodes.c.uid.in_(ordered[start : start + 500])
            )
        )
        found.update((row.uid, int(row.id)) for row in rows)
    return found
