"""The graph changelog: a row per write, logged in the write's own transaction, read back by id, pruned by age."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.graph.model import Change, Edge, Node
from specai.store import Store
from specai.store.engine import insert_ignore
from specai.store.lease import Fence
from specai.store.schema import graph_changelog, graph_changelog_state
from specai.store.types import utcnow

CHANGE_BATCH = 500
_LOG_CHANGE = insert(graph_changelog)  # built once; compiled once per engine


def change_row(
    kind: str, operation: str, entity: Node | Edge, now: dt.datetime, origin: str | None = None
) -> dict[str, Any]:
    """The changelog row of one write to a node or edge, with its snapshot (`origin`: the mesh member a synced
    change came from)."""
    return {
        "session_id": entity.session_id,
        "entity_type": kind,
        "entity_id": entity.id,
        "entity_uid": entity.uid,
        "operation": operation,
        "version": entity.version,
        "data": entity.as_dict(),
        "created_at": now,
        "origin": origin,
    }


async def log_change(
    conn: AsyncConnection,
    kind: str,
    operation: str,
    entity: Node | Edge,
    now: dt.datetime,
    origin: str | None = None,
) -> None:
    """Record one write to a node or edge in the transaction that made it."""
    await conn.execute(_LOG_CHANGE, change_row(kind, operation, entity, now, origin))


async def log_changes(
    conn: AsyncConnection, kind: str, changes: Sequence[tuple[str, Node | Edge, str | None]], now: dt.datetime
) -> None:
    """Record many `(operation, entity, origin)` writes in one statement, in order."""
    if changes:
        await conn.execute(
            _LOG_CHANGE,
            [change_row(kind, operation, entity, now, origin) for operation, entity, origin in changes],
        )


class Changelog:
    """Reads and retention of the changelog; ids only grow, so an id is a watcher's cursor."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def changes(self, session_id: str, after: int, limit: int = CHANGE_BATCH) -> list[Change]:
        """The session's changes with an id above `after`, oldest first."""
        query = (
            select(graph_changelog)
            .where(graph_changelog.c.session_id == session_id, graph_changelog.c.id > after)
            .order_by(graph_changelog.c.id)
            .limit(limit)
        )
        async with self.store.connect() as conn:
            return [Change.from_row(row) for row in (await conn.execute(query)).all()]

    async def latest_change_id(self, session_id: str | None = None) -> int:
        """The newest changelog id of the session, or of any (0 when there is none): "now" for a new watcher.

        A session's ids commit in increasing order (GraphStore.write), so nothing of it can commit at or below
        its own newest id later; another session's newest id gives no such promise on PostgreSQL.
        """
        query = select(func.max(graph_changelog.c.id))
        if session_id is not None:
            query = query.where(graph_changelog.c.session_id == session_id)
        async with self.store.connect() as conn:
            newest = await conn.scalar(query)
            return max(int(newest or 0), await _pruned_through(conn))

    async def pruned_through(self) -> int:
        """The newest changelog id removed by retention (0 when nothing was pruned)."""
        async with self.store.connect() as conn:
            return await _pruned_through(conn)

    async def prune(self, older_than: dt.timedelta, fence: Fence | None = None) -> int:
        """Delete changelog rows older than `older_than`; returns how many went (`fence` runs first in the same
        transaction: a singleton job's lease)."""
        cutoff = utcnow() - older_than
        async with self.store.transaction() as conn:
            if fence is not None:
                await fence(conn)
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


async def _pruned_through(conn: AsyncConnection) -> int:
    found = await conn.scalar(
        select(graph_changelog_state.c.pruned_through).where(graph_changelog_state.c.id == 1)
    )
    return int(found or 0)
