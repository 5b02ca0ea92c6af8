"""In-process sync replicas for the engine tests: each a real store (SQLite file or PostgreSQL database), a real
GraphStore whose writes are recorded, and a SyncEngine; exchanges go through the wire form, as between servers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from specai.graph.store import GraphStore
from specai.graph.sync.engine import SyncEngine
from specai.graph.sync.hlc import HybridClock
from specai.graph.sync.payload import SyncPayload
from specai.graph.sync.recorder import SyncRecorder
from specai.store import Store
from specai.store.schema import graph_edges, graph_nodes

SESSION = "shared"


class SkewedClock:
    """A wall clock `offset_ms` away from this machine's (or frozen at `fixed_ms`)."""

    def __init__(self, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms

    def __call__(self) -> int:
        import time

        return time.time_ns() // 1_000_000 + self.offset_ms


@dataclass
class Replica:
    """One member: its store, graph and sync engine."""

    name: str
    store: Store
    graph: GraphStore
    sync: SyncEngine
    wall: SkewedClock

    @classmethod
    async def open(cls, name: str, url: str, offset_ms: int = 0, max_skew_ms: int = 60_000) -> Replica:
        store = await Store.open_url(url)
        wall = SkewedClock(offset_ms)
        clock = HybridClock(name, max_skew_ms, wall)
        graph = GraphStore(store, recorder=SyncRecorder(clock))
        return cls(name, store, graph, SyncEngine(graph, clock), wall)

    async def close(self) -> None:
        await self.store.close()

    async def pull(self, other: Replica, limit: int = 1000) -> int:
        """Pull everything `other` holds past our vector, page by page, through the wire form; pages applied."""
        pages = 0
        while True:
            status = await self.sync.status(SESSION)
            payload = await other.sync.request(SESSION, None, status.vector, limit, requester=self.name)
            await self.sync.apply(SyncPayload.from_wire(payload.wire(), "default"), sender=other.name)
            pages += 1
            if not payload.more:
                return pages

    async def dump(self) -> dict[str, Any]:
        """The visible graph by uid (local ids and timestamps left out), edges by endpoint uids."""
        async with self.store.connect() as conn:
            nodes = (await conn.execute(select(graph_nodes).where(graph_nodes.c.session_id == SESSION))).all()
            edges = (await conn.execute(select(graph_edges).where(graph_edges.c.session_id == SESSION))).all()
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


def sqlite_url(tmp: Path, name: str) -> str:
    return f"sqlite+aiosqlite:///{tmp / (name + '.db')}"
