"""The visible graph follows the merged registers: a node shows while it exists, an edge while it and both its
endpoints exist. Each visible change is one changelog row tagged with the member it came from."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.graph.changelog import log_change
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


async def show_nodes(
    conn: AsyncConnection, session_id: str, nodes: dict[str, State], origins: dict[str, str], now: dt.datetime
) -> Shown:
    """Make the visible rows of these nodes match their state (edges of a vanishing node go first)."""
    shown = Shown()
    rows = await _rows(conn, graph_nodes, session_id, list(nodes))
    for uid, entity in nodes.items():
        row, origin = rows.get(uid), origins.get(uid)
        if not alive(entity):
            if row is not None:
                node = Node.from_row(row)
                shown.edges += await _hide_edges_of(conn, node.id, now, origin)
                await conn.execute(delete(graph_nodes).where(graph_nodes.c.id == node.id))
                await log_change(conn, "node", "delete", node, now, origin)
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
            new_id = await conn.scalar(
                insert(graph_nodes).returning(graph_nodes.c.id),
                {**fields, "created_at": created, "updated_at": now},
            )
            node = Node(id=int(new_id or 0), **fields, created_at=created, updated_at=now)
            await log_change(conn, "node", "create", node, now, origin)
            shown.appeared.append(uid)
            shown.nodes += 1
            continue
        node = Node.from_row(row)
        if not same((node.node_type, node.label, node.properties), tuple(wanted.values())):
            changed = replace(node, **wanted, version=node.version + 1, updated_at=now)
            await conn.execute(
                update(graph_nodes)
                .where(graph_nodes.c.id == node.id)
                .values(**wanted, version=changed.version, updated_at=now)
            )
            await log_change(conn, "node", "update", changed, now, origin)
            shown.nodes += 1
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
    changed_rows = 0
    for uid, entity in edges.items():
        row, origin, fixed = rows.get(uid), origins.get(uid), ends(entity)
        source = ids.get(fixed.source_uid) if fixed else None
        target = ids.get(fixed.target_uid) if fixed else None
        visible = alive(entity) and source is not None and target is not None
        if not visible:
            if row is not None:
                await conn.execute(delete(graph_edges).where(graph_edges.c.id == row.id))
                await log_change(conn, "edge", "delete", Edge.from_row(row), now, origin)
                changed_rows += 1
            continue
        assert fixed is not None
        assert source is not None
        assert target is not None
        got = values(entity)
        predicate: str | None = got.get("predicate")
        weight = float(got.get("weight", 1.0))
        props: dict[str, Any] | None = _props(got) or None
        if row is None:
            created = _created_at(entity)
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
                created_at=created,
                updated_at=now,
            )
            columns = {k: v for k, v in edge.__dict__.items() if k != "id"}
            new_id = await conn.scalar(insert(graph_edges).returning(graph_edges.c.id), columns)
            edge = replace(edge, id=int(new_id or 0))
            await log_change(conn, "edge", "create", edge, now, origin)
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
            await conn.execute(
                update(graph_edges)
                .where(graph_edges.c.id == edge.id)
                .values(
                    predicate=predicate,
                    weight=weight,
                    properties=props,
                    version=after.version,
                    updated_at=now,
                )
            )
            await log_change(conn, "edge", "update", after, now, origin)
            changed_rows += 1
    return changed_rows


async def edges_to_recheck(conn: AsyncConnection, appeared: Sequence[str]) -> dict[str, State]:
    """Known edges of nodes that just became visible: they may show now."""
    return await journal.edges_touching(conn, appeared) if appeared else {}


async def _hide_edges_of(conn: AsyncConnection, node_id: int, now: dt.datetime, origin: str | None) -> int:
    """Remove the visible edges of a node about to vanish (their rows stay in the sync state)."""
    rows = (
        await conn.execute(
            select(graph_edges)
            .where((graph_edges.c.source_id == node_id) | (graph_edges.c.target_id == node_id))
            .order_by(graph_edges.c.id)
        )
    ).all()
    for row in rows:
        await conn.execute(delete(graph_edges).where(graph_edges.c.id == row.id))
        await log_change(conn, "edge", "delete", Edge.from_row(row), now, origin)
    return len(rows)


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
