"""In-process sync replicas for the engine tests: each a real store (SQLite file or PostgreSQL database), a real
GraphStore whose writes are recorded, and a SyncEngine; exchanges go through the wire form, as between servers."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from specai.graph.model import Edge, Node
from specai.graph.store import GraphStore
from specai.graph.sync import journal
from specai.graph.sync.change import PROPERTY, EdgeEnds, Kind, SyncChange, from_wire
from specai.graph.sync.engine import ApplyStats, SyncEngine
from specai.graph.sync.hlc import HybridClock
from specai.graph.sync.materialize import edges_to_recheck, show_edges, show_nodes
from specai.graph.sync.payload import SyncPayload
from specai.graph.sync.recorder import SyncRecorder
from specai.graph.sync.registers import alive, values
from specai.store import Store
from specai.store.schema import (
    graph_changelog,
    graph_edges,
    graph_nodes,
    graph_sync_conflicts,
    graph_sync_entities,
    graph_sync_log,
    graph_sync_peers,
)

SESSION = "shared"


def real_ms() -> int:
    """This machine's clock in milliseconds."""
    return time.time_ns() // 1_000_000


class SkewedClock:
    """A wall clock `offset_ms` away from `base` (this machine's clock, or a test's own)."""

    def __init__(self, offset_ms: int = 0, base: Callable[[], int] = real_ms) -> None:
        self.offset_ms = offset_ms
        self.base = base

    def __call__(self) -> int:
        return self.base() + self.offset_ms


class Crash(Exception):
    """Raised inside a write transaction after everything in it ran, so it rolls back as a crash before commit
    would."""


def canonical(value: Any) -> str:
    """JSON text that tells 1, 1.0 and True apart (Python's == does not), keys sorted."""
    return json.dumps(value, sort_keys=True)


class Replica:
    """One member: its store, graph and sync engine."""

    def __init__(
        self, name: str, store: Store, graph: GraphStore, sync: SyncEngine, wall: SkewedClock
    ) -> None:
        self.name = name
        self.store = store
        self.graph = graph
        self.sync = sync
        self.wall = wall

    def __repr__(self) -> str:
        return f"Replica({self.name})"

    @classmethod
    async def open(
        cls,
        name: str,
        url: str,
        offset_ms: int = 0,
        max_skew_ms: int = 60_000,
        owner_name: Callable[[str], str | None] | None = None,
        owner_id: Callable[[str], str | None] | None = None,
        base: Callable[[], int] = real_ms,
    ) -> Replica:
        parsed = make_url(url)
        if parsed.get_backend_name() == "postgresql":
            parsed = parsed.set(drivername="postgresql+asyncpg")
        store = await Store.open_url(parsed)
        wall = SkewedClock(offset_ms, base)
        clock = HybridClock(name, max_skew_ms, wall)
        graph = GraphStore(store, recorder=SyncRecorder(clock))
        owners: dict[str, Any] = {}
        if owner_name is not None:
            owners["owner_name"] = owner_name
        if owner_id is not None:
            owners["owner_id"] = owner_id
        return cls(name, store, graph, SyncEngine(graph, clock, **owners), wall)

    async def close(self) -> None:
        await self.store.close()

    async def enable(self) -> None:
        """Turn sync on for the shared session."""
        await self.sync.set_enabled(SESSION, None, True)

    async def vector(self) -> dict[str, int]:
        """This member's version vector of the shared session."""
        async with self.store.connect() as conn:
            return await journal.heads(conn, SESSION)

    # --- exchanges ---------------------------------------------------------------------------------------------

    async def page(
        self, other: Replica, vector: dict[str, int] | None = None, limit: int = 1000, report: bool = True
    ) -> dict[str, Any]:
        """One page `other` serves past `vector` (ours by default), as the wire carries it; `report`: tell
        `other` who asks (only honest with our real vector)."""
        if vector is None:
            vector = await self.vector()
        payload = await other.sync.request(
            SESSION, None, vector, limit, requester=self.name if report else None
        )
        return payload.wire()

    async def apply(self, wire: dict[str, Any], sender: Replica | None = None) -> ApplyStats:
        """Apply a wire payload, as /sync/apply would."""
        payload = SyncPayload.from_wire(json.loads(json.dumps(wire)), "default")
        return await self.sync.apply(payload, sender=None if sender is None else sender.name)

    async def pull(self, other: Replica, limit: int = 1000, pages: int | None = None) -> int:
        """Pull what `other` holds past our vector, page by page through the wire form (stopping after `pages`
        even when there is more); pages applied."""
        done = 0
        while pages is None or done < pages:
            wire = await self.page(other, limit=limit)
            await self.apply(wire, sender=other)
            done += 1
            if not wire["more"]:
                break
        return done

    @asynccontextmanager
    async def crashing(self) -> AsyncIterator[None]:
        """Within: every graph write transaction runs to its end, then raises Crash before it commits."""
        original = self.graph.write

        @asynccontextmanager
        async def write(*args: Any, **options: Any) -> AsyncIterator[Any]:
            async with original(*args, **options) as tx:
                yield tx
                raise Crash("killed before commit")

        self.graph.write = write  # type: ignore[method-assign]
        try:
            yield
        finally:
            del self.graph.write

    # --- local writes no public API makes ------------------------------------------------------------------------

    async def recreate(
        self, kind: Kind, uid: str, fields: dict[str, Any], ends: EdgeEnds | None = None
    ) -> SyncChange:
        """What a create with a chosen uid would do (the API always mints a new uid): in one transaction, log
        this member's create of `uid` with `fields` (registers, as SyncRecorder.registers names them) over
        whatever state the uid has, then show the merged state as a local write (changelog origin NULL)."""
        async with self.graph.write(SESSION, None, synced=True) as tx:  # synced: the recorder is called here
            current = await journal.state(tx.conn, uid)
            change = await self.sync.recorder.write(
                tx.conn, SESSION, kind, "create", uid, fields, current, ends
            )
            merged = await journal.state(tx.conn, uid)
            if kind == "node":
                shown = await show_nodes(tx.conn, SESSION, {uid: merged}, {}, tx.now)
                edges = await edges_to_recheck(tx.conn, shown.appeared)
            else:
                edges = {uid: merged}
            await show_edges(tx.conn, SESSION, edges, {}, tx.now)
        return change

    # --- reading -------------------------------------------------------------------------------------------------

    async def visible(self) -> tuple[list[Node], list[Edge]]:
        """The shared session's nodes and edges as stored, oldest first."""
        async with self.store.connect() as conn:
            nodes = await conn.execute(
                select(graph_nodes).where(graph_nodes.c.session_id == SESSION).order_by(graph_nodes.c.id)
            )
            edges = await conn.execute(
                select(graph_edges).where(graph_edges.c.session_id == SESSION).order_by(graph_edges.c.id)
            )
            return [Node.from_row(r) for r in nodes], [Edge.from_row(r) for r in edges]

    async def dump(self) -> dict[str, Any]:
        """The visible graph by uid (local ids and timestamps left out), edges by endpoint uids; compare two with
        `canonical`, which tells 1, 1.0 and True apart."""
        return dump_of(*await self.visible())

    async def canonical(self) -> str:
        """`dump()` as canonical JSON text."""
        return canonical(await self.dump())

    async def states(self) -> dict[str, dict[str, Any]]:
        """Every entity's register state held here."""
        async with self.store.connect() as conn:
            rows = await conn.execute(
                select(graph_sync_entities.c.uid, graph_sync_entities.c.state).where(
                    graph_sync_entities.c.session_id == SESSION
                )
            )
            return {row.uid: row.state for row in rows}

    async def projection(self) -> dict[str, Any]:
        """What the register state says should be visible, in `dump()`'s shape."""
        return projection_of(await self.states())

    async def own_changes(self, after: int) -> list[SyncChange]:
        """This member's own logged changes numbered above `after`, oldest first."""
        async with self.store.connect() as conn:
            rows = await conn.execute(
                select(graph_sync_log.c.body)
                .where(
                    graph_sync_log.c.session_id == SESSION,
                    graph_sync_log.c.origin == self.name,
                    graph_sync_log.c.seq > after,
                )
                .order_by(graph_sync_log.c.seq)
            )
            return [from_wire(r.body["kind"], r.body, tombstone="deleted_by" in r.body) for r in rows]

    async def changelog(self) -> list[tuple[Any, ...]]:
        """The shared session's graph changelog rows (id, entity uid, operation, version, origin)."""
        async with self.store.connect() as conn:
            rows = await conn.execute(
                select(
                    graph_changelog.c.id,
                    graph_changelog.c.entity_uid,
                    graph_changelog.c.operation,
                    graph_changelog.c.version,
                    graph_changelog.c.origin,
                )
                .where(graph_changelog.c.session_id == SESSION)
                .order_by(graph_changelog.c.id)
            )
            return [tuple(r) for r in rows]

    async def log_keys(self) -> list[tuple[str, int]]:
        """Every `(origin, seq)` the sync log holds."""
        async with self.store.connect() as conn:
            rows = await conn.execute(
                select(graph_sync_log.c.origin, graph_sync_log.c.seq)
                .where(graph_sync_log.c.session_id == SESSION)
                .order_by(graph_sync_log.c.origin, graph_sync_log.c.seq)
            )
            return [(r.origin, int(r.seq)) for r in rows]

    async def snapshot(self) -> str:
        """Everything sync keeps or shows here, as one text: equal snapshots mean nothing changed (timestamps of
        peers left out)."""
        async with self.store.connect() as conn:
            peers = await conn.execute(
                select(graph_sync_peers.c.peer, graph_sync_peers.c.their_vector).order_by(
                    graph_sync_peers.c.peer
                )
            )
            conflicts = await conn.scalar(select(func.count()).select_from(graph_sync_conflicts))
            rows = await conn.execute(select(graph_nodes).order_by(graph_nodes.c.id))
            node_rows = [Node.from_row(r).as_dict() for r in rows]
            rows = await conn.execute(select(graph_edges).order_by(graph_edges.c.id))
            edge_rows = [Edge.from_row(r).as_dict() for r in rows]
        return canonical(
            {
                "nodes": node_rows,
                "edges": edge_rows,
                "states": await self.states(),
                "log": await self.log_keys(),
                "vector": await self.vector(),
                "changelog": await self.changelog(),
                "peers": [(p.peer, p.their_vector) for p in peers],
                "conflicts": conflicts,
            }
        )


def dump_of(nodes: list[Node], edges: list[Edge]) -> dict[str, Any]:
    """`Replica.dump()` of these rows (edge properties None and {} alike)."""
    uid_of = {n.id: n.uid for n in nodes}
    return {
        "nodes": {n.uid: (n.node_type, n.label, n.properties) for n in nodes},
        "edges": {
            e.uid: (
                uid_of[e.source_id],
                uid_of[e.target_id],
                e.edge_type,
                e.predicate,
                e.weight,
                e.properties or {},
            )
            for e in edges
        },
    }


def projection_of(states: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What these register states say should be visible, in `dump()`'s shape: live nodes, and live edges whose
    endpoints both live."""
    nodes: dict[str, Any] = {}
    for uid, state in states.items():
        if state.get("ends") is None and alive(state):
            got = values(state)
            nodes[uid] = (got["node_type"], got["label"], _props(got))
    edges: dict[str, Any] = {}
    for uid, state in states.items():
        ends = state.get("ends")
        if ends is None or not alive(state):
            continue
        if ends["source_uid"] in nodes and ends["target_uid"] in nodes:
            got = values(state)
            edges[uid] = (
                ends["source_uid"],
                ends["target_uid"],
                ends["edge_type"],
                got.get("predicate"),
                float(got.get("weight", 1.0)),
                _props(got),
            )
    return {"nodes": nodes, "edges": edges}


def _props(got: dict[str, Any]) -> dict[str, Any]:
    return {name[len(PROPERTY) :]: value for name, value in got.items() if name.startswith(PROPERTY)}


def sqlite_url(tmp: Path, name: str) -> str:
    return f"sqlite+aiosqlite:///{tmp / (name + '.db')}"


async def migrated_template(path: Path) -> Path:
    """An empty, migrated SQLite database file to copy for each replica (a migration per replica costs ~0.1 s)."""
    store = await Store.open_url(f"sqlite+aiosqlite:///{path}")
    await store.close()
    return path


def sqlite_copy(template: Path, tmp: Path, name: str) -> str:
    """The URL of a fresh copy of `template` named `name` under `tmp`."""
    target = tmp / (name + ".db")
    shutil.copyfile(template, target)
    return sqlite_url(tmp, name)
