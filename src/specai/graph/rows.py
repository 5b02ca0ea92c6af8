"""Finding graph rows: one by id (None past 64 bits; 404 alike for missing and invisible) or a page, newest first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.errors import NotFoundError
from specai.graph.model import Edge, Node
from specai.graph.validate import check_limit, parse_cursor
from specai.ids import in_id_range
from specai.store import Store
from specai.store.schema import graph_edges, graph_nodes


def missing(kind: str, entity_id: int) -> NotFoundError:
    """A node or edge that does not exist, or that the caller may not see: one message for both."""
    return NotFoundError(f"{kind} {entity_id} not found")


async def find(conn: AsyncConnection, column: Any, entity_id: int) -> Any:
    """One column of the row with this id (None when there is none, or the id is beyond 64 bits)."""
    if not in_id_range(entity_id):
        return None
    return await conn.scalar(select(column).where(column.table.c.id == entity_id))


async def session_of(store: Store, table: Any, entity_id: int, kind: str) -> str:
    """The session of the node or edge with this id, or NotFoundError."""
    async with store.connect() as conn:
        found = await find(conn, table.c.session_id, entity_id)
    if found is None:
        raise missing(kind, entity_id)
    return str(found)


async def node_or_404(conn: AsyncConnection, node_id: int) -> Node:
    """The node with this id, or NotFoundError."""
    row = await _row(conn, graph_nodes, node_id)
    if row is None:
        raise missing("node", node_id)
    return Node.from_row(row)


async def edge_or_404(conn: AsyncConnection, edge_id: int) -> Edge:
    """The edge with this id, or NotFoundError."""
    row = await _row(conn, graph_edges, edge_id)
    if row is None:
        raise missing("edge", edge_id)
    return Edge.from_row(row)


def containing(words: str) -> ColumnElement[bool]:
    """Nodes whose label or properties contain `words`, lower-cased (LIKE wildcards in `words` match literally)."""
    pattern = f"%{_escape_like(words.lower())}%"
    return or_(
        func.lower(graph_nodes.c.label).like(pattern, escape="\\"),
        func.lower(graph_nodes.c.properties).like(pattern, escape="\\"),
    )


async def page(
    store: Store, query: Select[Any], id_column: Any, limit: int, cursor: str | None
) -> tuple[Sequence[Row[Any]], str | None]:
    """Up to `limit` rows below the cursor's id, newest first, and the cursor of the next page (None on the last)."""
    check_limit(limit)
    below = parse_cursor(cursor)
    if below is not None:
        query = query.where(id_column < below)
    async with store.connect() as conn:
        rows = (await conn.execute(query.order_by(id_column.desc()).limit(limit + 1))).all()
    if len(rows) > limit:
        return rows[:limit], str(rows[limit - 1].id)
    return rows, None


async def _row(conn: AsyncConnection, table: Any, entity_id: int) -> Row[Any] | None:
    if not in_id_range(entity_id):
        return None
    return (await conn.execute(select(table).where(table.c.id == entity_id))).first()


def _escape_like(words: str) -> str:
    return words.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
