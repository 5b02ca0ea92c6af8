"""Applying a GraphPlan to a session: only the plan's own nodes and edges are created, updated or removed."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select

from specai.graph.access import GraphAccess
from specai.graph.model import Edge, GraphPlan, Node, PlanResult
from specai.graph.validate import check_edge_type, check_weight
from specai.graph.write import GraphWrite
from specai.store.schema import graph_edges, graph_nodes


async def apply_plan(tx: GraphWrite, plan: GraphPlan, access: GraphAccess) -> PlanResult:
    """Make the session's nodes from `plan.source` match a checked plan, inside `tx`.

    Nodes are matched by `properties.bootstrap_key`: matching ones are updated when they differ, missing ones
    are created, and ones the plan no longer has are deleted with their edges; other nodes are not touched.
    """
    counts = {
        "nodes_created": 0,
        "nodes_updated": 0,
        "nodes_removed": 0,
        "edges_created": 0,
        "edges_removed": 0,
    }
    rows = (await tx.conn.execute(select(graph_nodes).where(graph_nodes.c.session_id == tx.session_id))).all()
    existing = {
        node.properties.get("bootstrap_key"): node
        for node in map(Node.from_row, rows)
        if node.properties.get("bootstrap_source") == plan.source
    }
    adding = sum(1 for planned in plan.nodes if planned.key not in existing)
    await access.check_quota(tx.conn, tx.owner_id, adding)
    ids = await _sync_nodes(tx, plan, existing, counts)
    for stale in existing.values():
        counts["edges_removed"] += await tx.delete_node(stale)
        counts["nodes_removed"] += 1
    counts["edges_created"], removed = await _sync_edges(tx, plan, ids)
    counts["edges_removed"] += removed
    return PlanResult(tx.session_id, ids.get(plan.root), **counts)


async def _sync_nodes(
    tx: GraphWrite, plan: GraphPlan, existing: dict[str | None, Node], counts: dict[str, int]
) -> dict[str, int]:
    """Create or update the plan's nodes, popping each from `existing` (what remains is stale); ids by key."""
    ids: dict[str, int] = {}
    for planned in plan.nodes:
        props = {**planned.properties, "bootstrap_source": plan.source, "bootstrap_key": planned.key}
        current = existing.pop(planned.key, None)
        if current is None:
            node = await tx.create_node(planned.node_type, planned.label, props)
            counts["nodes_created"] += 1
        else:
            node = current
            if (current.node_type, current.label, current.properties) != (
                planned.node_type,
                planned.label,
                props,
            ):
                node = await tx.update_node(current, planned.node_type, planned.label, props)
                counts["nodes_updated"] += 1
        ids[planned.key] = node.id
    return ids


async def _sync_edges(tx: GraphWrite, plan: GraphPlan, ids: Mapping[str, int]) -> tuple[int, int]:
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
    existing = {(row.source_id, row.target_id, row.edge_type): Edge.from_row(row) for row in rows}
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
            await tx.create_edge(key[0], key[1], kind, planned.predicate, props, weight)
            created += 1
        elif (current.predicate, current.weight) != (planned.predicate, weight):
            await tx.update_edge(current, planned.predicate, current.properties, weight)
    removed = 0
    for key, edge in existing.items():
        if key not in wanted and (edge.properties or {}).get("bootstrap_source") == plan.source:
            await tx.delete_edge(edge)
            removed += 1
    return created, removed
