"""Sync for one member: serve changes past a peer's vector, apply a peer's payload in one transaction, and keep
each session's sync settings, peers' reported vectors, conflicts and tombstone collection.

Whose data: only sessions sync is enabled for here, and only for mesh (or admin) callers (checked by the routes);
a synced session is owned by the same user name on every member, and a payload for a session owned here by
another name is refused.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.errors import ConflictError, NotFoundError, UnprocessableError
from specai.graph.model import Edge, Node, Page
from specai.graph.store import GraphStore
from specai.graph.sync import journal
from specai.graph.sync.change import ABSENT, EdgeEnds, Kind, SyncChange
from specai.graph.sync.hlc import HybridClock, stamp_text
from specai.graph.sync.materialize import edges_to_recheck, show_edges, show_nodes
from specai.graph.sync.payload import SyncPayload
from specai.graph.sync.recorder import SyncRecorder, Write, registers
from specai.graph.sync.registers import Overwrite, State, alive, empty, merge, same, stamp_of, values
from specai.graph.validate import check_limit, parse_cursor
from specai.ids import check_new_session_id, check_session_id
from specai.store.engine import insert_ignore, upsert
from specai.store.schema import (
    graph_edges,
    graph_nodes,
    graph_sessions,
    graph_sync_configs,
    graph_sync_conflicts,
    graph_sync_entities,
    graph_sync_log,
    graph_sync_peers,
)
from specai.store.types import utcnow

DEFAULT_GRAPH = "default"
STRATEGIES = ("vector_clock", "last_write_wins")  # both mean per-field LWW under hybrid logical clocks
DEFAULT_STRATEGY = "vector_clock"
DEFAULT_INTERVAL = 60
DEFAULT_PAGE = 1000
MAX_PAGE = 5000


class SyncNotEnabledError(NotFoundError):
    """The session is not synced on this member."""

    code = "sync_not_enabled"


class OwnerMismatchError(ConflictError):
    """The session is owned here by another user name than on the sending member."""

    code = "owner_mismatch"


class UnknownGraphError(UnprocessableError):
    """A graph name other than the one graph a session holds."""

    code = "unknown_graph"


def check_graph(graph_name: str | None) -> str:
    """A session holds one graph, `default` (the original's graph names selected no data of their own)."""
    name = graph_name or DEFAULT_GRAPH
    if name != DEFAULT_GRAPH:
        raise UnknownGraphError(
            f"graph '{name}' does not exist: a session holds one graph, named '{DEFAULT_GRAPH}'"
        )
    return name


@dataclass(frozen=True)
class SyncConfig:
    """One session's sync settings here."""

    session_id: str
    graph_name: str
    sync_enabled: bool
    conflict_resolution_strategy: str = DEFAULT_STRATEGY
    sync_interval_seconds: int = DEFAULT_INTERVAL
    last_sync_at: dt.datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        """The original's per-graph config entry."""
        return {
            "graph_name": self.graph_name,
            "sync_enabled": self.sync_enabled,
            "conflict_resolution_strategy": self.conflict_resolution_strategy,
            "sync_interval_seconds": self.sync_interval_seconds,
            "last_sync_at": None if self.last_sync_at is None else self.last_sync_at.isoformat(),
        }


@dataclass(frozen=True)
class ApplyStats:
    """What applying one payload did; `vector` is this member's version vector afterwards."""

    nodes_applied: int
    edges_applied: int
    tombstones_applied: int
    conflicts_detected: int
    duplicates: int
    sync_type: str
    vector: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """The original's stats (every conflict is resolved, by the stamps) plus `duplicates`."""
        return {
            "nodes_applied": self.nodes_applied,
            "edges_applied": self.edges_applied,
            "tombstones_applied": self.tombstones_applied,
            "conflicts_detected": self.conflicts_detected,
            "conflicts_resolved": self.conflicts_detected,
            "duplicates": self.duplicates,
            "sync_type": self.sync_type.capitalize(),
        }


@dataclass(frozen=True)
class PeerRecord:
    """What a peer last reported holding of a session, and when it last asked or was pulled from."""

    instance_id: str
    their_vector: dict[str, int]
    reported_at: dt.datetime | None
    pulled_at: dt.datetime | None


@dataclass(frozen=True)
class SyncPosition:
    """Where a session's sync stands here: its settings, version vector and what peers reported holding."""

    config: SyncConfig
    vector: dict[str, int]
    peers: list[PeerRecord]


@dataclass(frozen=True)
class SyncStatus:
    """A session's sync state here."""

    config: SyncConfig
    vector: dict[str, int]
    pending_changes: int
    peers: list[PeerRecord]


def _identity(value: str) -> str | None:
    return value


class SyncEngine:
    """Graph sync of this member's store (see the module docstring)."""

    def __init__(
        self,
        graph: GraphStore,
        clock: HybridClock,
        owner_name: Callable[[str], str | None] = _identity,
        owner_id: Callable[[str], str | None] = _identity,
    ) -> None:
        self.graph = graph
        self.store = graph.store
        self.clock = clock
        self.recorder = graph.recorder or SyncRecorder(clock)
        self.owner_name = owner_name  # owner id here -> user name (the same on every member)
        self.owner_id = owner_id  # user name -> owner id here

    @property
    def origin(self) -> str:
        """This member's instance id."""
        return self.clock.origin

    # --- settings --------------------------------------------------------------------------------------------

    async def config(self, session_id: str, graph_name: str | None = None) -> SyncConfig:
        """One session's settings (defaults when never configured)."""
        graph_name = check_graph(graph_name)
        async with self.store.connect() as conn:
            return await _config(conn, check_session_id(session_id), graph_name)

    async def configs(self, session_id: str) -> list[SyncConfig]:
        """The session's graph configs (its one graph)."""
        return [await self.config(session_id)]

    async def enabled_sessions(self) -> list[tuple[str, str]]:
        """Every `(session, graph)` sync is enabled for here."""
        async with self.store.connect() as conn:
            rows = await conn.execute(
                select(graph_sync_configs.c.session_id, graph_sync_configs.c.graph_name)
                .where(graph_sync_configs.c.sync_enabled.is_(True))
                .order_by(graph_sync_configs.c.session_id)
            )
            return [(row.session_id, row.graph_name) for row in rows]

    async def configure(
        self,
        session_id: str,
        graph_name: str | None,
        sync_enabled: bool,
        strategy: str | None = None,
        interval: int | None = None,
    ) -> SyncConfig:
        """Change a session's settings; enabling logs what the session holds (and anything changed while sync
        was off), so peers receive the data that was there before."""
        graph_name = check_graph(graph_name)
        session_id = check_session_id(session_id)
        if strategy is not None and strategy not in STRATEGIES:
            raise UnprocessableError(
                f"conflict_resolution_strategy must be one of {', '.join(STRATEGIES)} (both mean per-field "
                "last-writer-wins by hybrid logical clock)",
                details={"allowed": list(STRATEGIES)},
            )
        if interval is not None and not 1 <= interval <= 86_400:
            raise UnprocessableError("sync_interval_seconds must be from 1 to 86400")
        async with self.graph.write(session_id, None, synced=True) as tx:
            before = await _config(tx.conn, session_id, graph_name)
            now = utcnow()
            after = SyncConfig(
                session_id,
                graph_name,
                sync_enabled,
                strategy or before.conflict_resolution_strategy,
                interval or before.sync_interval_seconds,
                before.last_sync_at,
            )
            await tx.conn.execute(
                upsert(
                    tx.conn,
                    graph_sync_configs,
                    ("session_id", "graph_name"),
                    ("sync_enabled", "conflict_resolution_strategy", "sync_interval_seconds", "updated_at"),
                ).values(
                    session_id=session_id,
                    graph_name=graph_name,
                    sync_enabled=sync_enabled,
                    conflict_resolution_strategy=after.conflict_resolution_strategy,
                    sync_interval_seconds=after.sync_interval_seconds,
                    created_at=now,
                    updated_at=now,
                    last_sync_at=before.last_sync_at,
                )
            )
            if sync_enabled and not before.sync_enabled:
                await self._reconcile(tx.conn, session_id)
            return after

    async def set_enabled(self, session_id: str, graph_name: str | None, enabled: bool) -> SyncConfig:
        """Turn sync on or off for a session (other settings kept)."""
        return await self.configure(session_id, graph_name, enabled)

    async def _reconcile(self, conn: AsyncConnection, session_id: str) -> None:
        """Log, as this member's changes, every difference between the visible graph and the sync state."""
        nodes = [
            Node.from_row(r)
            for r in await conn.execute(
                select(graph_nodes).where(graph_nodes.c.session_id == session_id).order_by(graph_nodes.c.id)
            )
        ]
        edges = [
            Edge.from_row(r)
            for r in await conn.execute(
                select(graph_edges).where(graph_edges.c.session_id == session_id).order_by(graph_edges.c.id)
            )
        ]
        uid_of = {node.id: node.uid for node in nodes}
        known = {
            row.uid: (row.kind, row.state)
            for row in await conn.execute(
                select(
                    graph_sync_entities.c.uid, graph_sync_entities.c.kind, graph_sync_entities.c.state
                ).where(graph_sync_entities.c.session_id == session_id)
            )
        }
        writes: list[Write] = []
        shown: set[str] = set()
        entities: list[Node | Edge] = [*nodes, *edges]
        for entity in entities:
            kind: Kind = "node" if isinstance(entity, Node) else "edge"
            shown.add(entity.uid)
            current = known.get(entity.uid, (kind, empty()))[1]
            fields = registers(entity)
            ends = None
            if isinstance(entity, Edge):
                ends = EdgeEnds(uid_of[entity.source_id], uid_of[entity.target_id], entity.edge_type)
            if not alive(current):
                writes.append(Write(kind, "create", entity.uid, fields, current, ends))
                continue
            before = values(current)
            changed = {
                name: value for name, value in fields.items() if not same(before.get(name, ABSENT), value)
            }
            changed.update({name: ABSENT for name in before if name not in fields})
            if changed:
                writes.append(Write(kind, "update", entity.uid, changed, current, ends))
        visible_nodes = {node.uid for node in nodes}
        for uid, (kind, current) in known.items():
            if uid in shown or not alive(current):
                continue
            ends_of = current.get("ends") or {}
            hidden_edge = kind == "edge" and not (
                ends_of.get("source_uid") in visible_nodes and ends_of.get("target_uid") in visible_nodes
            )
            if not hidden_edge:  # deleted while sync was off
                fixed = EdgeEnds(**ends_of) if kind == "edge" else None
                writes.append(Write(kind, "delete", uid, {}, current, fixed))
        await self.recorder.write_many(conn, session_id, writes)

    # --- the protocol ----------------------------------------------------------------------------------------

    async def request(
        self,
        session_id: str,
        graph_name: str | None,
        vector: dict[str, int],
        limit: int = DEFAULT_PAGE,
        requester: str | None = None,
    ) -> SyncPayload:
        """Every change held here past `vector` (a page of `limit`; `more` tells there is another)."""
        graph_name = check_graph(graph_name)
        session_id = check_session_id(session_id)
        if not 1 <= limit <= MAX_PAGE:
            raise UnprocessableError(f"limit must be from 1 to {MAX_PAGE}")
        async with self.store.transaction() as conn:
            await _require_enabled(conn, session_id)
            changes, through, more = await journal.past(conn, session_id, vector, limit)
            owner = await self.graph.access.owner(conn, session_id)
            if requester is not None and requester != self.origin:
                await _report(conn, session_id, requester, vector, reported=True)
        return SyncPayload(
            session_id,
            graph_name,
            changes,
            since={origin: vector.get(origin, 0) for origin in through},
            through=through,
            more=more,
            owner=None if owner is None else self.owner_name(owner),
        )

    async def apply(self, payload: SyncPayload, sender: str | None = None) -> ApplyStats:
        """Apply one payload in one transaction: merge, log, advance heads, show, record conflicts; applying
        the same payload again changes nothing."""
        check_graph(payload.graph_name)
        session_id = check_session_id(payload.session_id)
        for change in payload.changes:
            self.clock.check(change.stamp)
        async with self.graph.write(session_id, None, synced=True) as tx:
            conn = tx.conn
            config = await _require_enabled(conn, session_id)
            await self._check_owner(conn, session_id, tx.owner_id, payload.owner)
            held = await journal.known(conn, session_id, payload.changes)
            # up to its head, every change of an origin is held here or was collected: never take one again
            mine = await journal.heads(conn, session_id)
            fresh: dict[tuple[str, int], SyncChange] = {}
            for change in payload.changes:
                if (change.origin, change.seq) not in held and change.seq > mine.get(change.origin, 0):
                    fresh.setdefault((change.origin, change.seq), change)
            new = list(fresh.values())
            await _check_sessions(conn, session_id, {c.uid for c in new})
            for change in new:
                self.clock.observe(change.stamp)
            found = await journal.states(conn, [c.uid for c in new])
            dirty: dict[str, State] = {}
            kinds: dict[str, Kind] = {}
            origins: dict[str, str] = {}
            overwrites: list[tuple[SyncChange, Overwrite]] = []
            for change in new:
                known = dirty.get(change.uid) or found.get(change.uid)
                if known is not None and (known.get("ends") is None) != (change.kind == "node"):
                    raise ConflictError(
                        f"uid {change.uid} is a {'node' if change.kind == 'edge' else 'edge'} here, not a {change.kind}",
                        details={"uid": change.uid},
                    )
                merged, lost = merge(known or empty(), change)
                dirty[change.uid], kinds[change.uid], origins[change.uid] = merged, change.kind, change.origin
                overwrites.extend((change, o) for o in lost)
            await journal.save(conn, session_id, kinds, dirty)
            await journal.append(conn, session_id, new)
            touched = set(payload.through) | {c.origin for c in new}
            await journal.advance(conn, session_id, touched, payload.since, payload.through)
            vector = await journal.heads(conn, session_id)
            detected = await self._record(conn, session_id, config.graph_name, overwrites, tx.now)
            nodes = {uid: s for uid, s in dirty.items() if kinds[uid] == "node"}
            shown = await show_nodes(conn, session_id, nodes, origins, tx.now)
            edges = await edges_to_recheck(conn, shown.appeared)
            edges.update({uid: s for uid, s in dirty.items() if kinds[uid] == "edge"})
            await show_edges(conn, session_id, edges, origins, tx.now)
            if sender is not None and sender != self.origin:
                await _report(conn, session_id, sender, payload.through, reported=False)
            await conn.execute(
                update(graph_sync_configs)
                .where(graph_sync_configs.c.session_id == session_id)
                .values(last_sync_at=tx.now)
            )
        return ApplyStats(
            nodes_applied=sum(1 for c in new if c.kind == "node" and c.operation != "delete"),
            edges_applied=sum(1 for c in new if c.kind == "edge" and c.operation != "delete"),
            tombstones_applied=sum(1 for c in new if c.operation == "delete"),
            conflicts_detected=detected,
            duplicates=len(payload.changes) - len(new),
            sync_type=payload.sync_type,
            vector=vector,
        )

    async def _check_owner(
        self, conn: AsyncConnection, session_id: str, owner_id: str | None, owner: str | None
    ) -> None:
        if owner is None:
            return
        if owner_id is not None:
            if self.owner_name(owner_id) != owner:
                raise OwnerMismatchError(
                    f"graph session '{session_id}' is owned here by another user than '{owner}' on the sending "
                    "member; a synced session must have the same owner name on every member"
                )
            return
        local = self.owner_id(owner)
        if local is None:
            raise OwnerMismatchError(
                f"graph session '{session_id}' belongs to user '{owner}', who has no account here; add the "
                "user on this member (specai auth add-user) so the session has the same owner"
            )
        check_new_session_id(session_id)
        await conn.execute(
            insert_ignore(conn, graph_sessions, "session_id").values(
                session_id=session_id, owner_id=local, created_at=utcnow()
            )
        )

    async def _record(
        self,
        conn: AsyncConnection,
        session_id: str,
        graph_name: str,
        overwrites: Sequence[tuple[SyncChange, Overwrite]],
        now: dt.datetime,
    ) -> int:
        """Keep each concurrent overwrite once (the same pair met again is not recorded twice)."""
        rows = [
            {
                "session_id": session_id,
                "graph_name": graph_name,
                "entity_type": change.kind,
                "uid": change.uid,
                "field": o.field,
                "winner_stamp": stamp_text(stamp_of(o.winner)),
                "loser_stamp": stamp_text(stamp_of(o.loser)),
                "winner_value": {"value": o.winner["v"]} if "v" in o.winner else None,
                "loser_value": {"value": o.loser["v"]} if "v" in o.loser else None,
                "local_won": o.local_won,
                "detected_at": now,
            }
            for change, o in overwrites
        ]
        if not rows:
            return 0
        result = await conn.execute(
            insert_ignore(
                conn, graph_sync_conflicts, "session_id", "uid", "field", "winner_stamp", "loser_stamp"
            ),
            rows,
        )
        return len(rows) if result.rowcount is None or result.rowcount < 0 else int(result.rowcount)

    # --- reading -----------------------------------------------------------------------------------------------

    async def position(self, session_id: str, graph_name: str | None = None) -> SyncPosition:
        """Settings, version vector and peers' reports: what a pull or push needs (cheap; no counting)."""
        config = await self.config(session_id, graph_name)
        async with self.store.connect() as conn:
            vector = await journal.heads(conn, config.session_id)
            return SyncPosition(config, vector, await _peers(conn, config.session_id))

    async def status(self, session_id: str, graph_name: str | None = None) -> SyncStatus:
        """The position, and how many held changes some known peer has not reported (counted in the log)."""
        at = await self.position(session_id, graph_name)
        pending = 0
        async with self.store.connect() as conn:
            for origin, head in at.vector.items():
                floor = min((p.their_vector.get(origin, 0) for p in at.peers), default=head)
                if floor < head:
                    pending += int(
                        await conn.scalar(
                            select(func.count()).where(
                                graph_sync_log.c.session_id == at.config.session_id,
                                graph_sync_log.c.origin == origin,
                                graph_sync_log.c.seq > floor,
                            )
                        )
                        or 0
                    )
        return SyncStatus(at.config, at.vector, pending, at.peers)

    async def conflicts(
        self, session_id: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> Page[dict[str, Any]]:
        """Conflicts resolved here, newest first, optionally of one session."""
        check_limit(limit)
        query = select(graph_sync_conflicts)
        if session_id is not None:
            query = query.where(graph_sync_conflicts.c.session_id == check_session_id(session_id))
        below = parse_cursor(cursor)
        if below is not None:
            query = query.where(graph_sync_conflicts.c.id < below)
        async with self.store.connect() as conn:
            rows = (
                await conn.execute(query.order_by(graph_sync_conflicts.c.id.desc()).limit(limit + 1))
            ).all()
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([_conflict(row) for row in rows], str(rows[-1].id) if more else None)

    # --- collection ----------------------------------------------------------------------------------------------

    async def collect(self, session_id: str, members: Sequence[str] = ()) -> int:
        """Forget deleted entities every known member holds the whole history of (peers that ever synced this
        session here and `members`); returns how many went."""
        async with self.graph.write(session_id, None, synced=True) as tx:
            reported = {p.instance_id: p.their_vector for p in await _peers(tx.conn, session_id)}
            everyone = set(reported) | (set(members) - {self.origin})
            if not everyone:
                return 0
            origins = await journal.heads(tx.conn, session_id)
            floor = {  # what every member holds, this one included (it may hold later changes out of order)
                origin: min(head, *(reported.get(member, {}).get(origin, 0) for member in everyone))
                for origin, head in origins.items()
            }
            gone = await journal.collectable(tx.conn, session_id, floor)
            await journal.forget(tx.conn, session_id, gone)
            return len(gone)


async def _config(conn: AsyncConnection, session_id: str, graph_name: str) -> SyncConfig:
    row = (
        await conn.execute(
            select(graph_sync_configs).where(
                graph_sync_configs.c.session_id == session_id, graph_sync_configs.c.graph_name == graph_name
            )
        )
    ).first()
    if row is None:
        return SyncConfig(session_id, graph_name, False)
    return SyncConfig(
        session_id,
        graph_name,
        bool(row.sync_enabled),
        row.conflict_resolution_strategy,
        int(row.sync_interval_seconds),
        row.last_sync_at,
    )


async def _require_enabled(conn: AsyncConnection, session_id: str) -> SyncConfig:
    config = await _config(conn, session_id, DEFAULT_GRAPH)
    if not config.sync_enabled:
        raise SyncNotEnabledError(f"sync is not enabled for graph session '{session_id}' on this member")
    return config


async def _check_sessions(conn: AsyncConnection, session_id: str, uids: set[str]) -> None:
    """A uid already used by another session here is refused (uids are global; a clash means a rogue peer)."""
    ordered = sorted(uids)
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        for table in (graph_sync_entities, graph_nodes, graph_edges):
            clash = await conn.scalar(
                select(table.c.uid).where(table.c.uid.in_(chunk), table.c.session_id != session_id).limit(1)
            )
            if clash is not None:
                raise ConflictError(
                    f"uid {clash} belongs to another graph session here", details={"uid": clash}
                )


async def _report(
    conn: AsyncConnection, session_id: str, peer: str, vector: dict[str, int], *, reported: bool
) -> None:
    """Remember what a peer holds: the vector it asked with (reported) or at least what it just sent us."""
    row = (
        await conn.execute(
            select(graph_sync_peers).where(
                graph_sync_peers.c.session_id == session_id, graph_sync_peers.c.peer == peer
            )
        )
    ).first()
    now = utcnow()
    theirs = dict(vector) if reported else dict(row.their_vector if row else {})
    if not reported:
        for origin, seq in vector.items():
            theirs[origin] = max(theirs.get(origin, 0), seq)
    await conn.execute(
        upsert(
            conn, graph_sync_peers, ("session_id", "peer"), ("their_vector", "reported_at", "pulled_at")
        ).values(
            session_id=session_id,
            peer=peer,
            their_vector=theirs,
            reported_at=now if reported else (row.reported_at if row else None),
            pulled_at=(row.pulled_at if row else None) if reported else now,
        )
    )


async def _peers(conn: AsyncConnection, session_id: str) -> list[PeerRecord]:
    rows = await conn.execute(
        select(graph_sync_peers)
        .where(graph_sync_peers.c.session_id == session_id)
        .order_by(graph_sync_peers.c.peer)
    )
    return [PeerRecord(r.peer, dict(r.their_vector), r.reported_at, r.pulled_at) for r in rows]


def _conflict(row: Any) -> dict[str, Any]:
    """A ConflictInfo: the original's fields (values as JSON, not re-encoded strings) plus the stamps."""
    winner = None if row.winner_value is None else row.winner_value["value"]
    loser = None if row.loser_value is None else row.loser_value["value"]
    local, remote = (winner, loser) if row.local_won else (loser, winner)
    return {
        "id": row.id,
        "session_id": row.session_id,
        "graph_name": row.graph_name,
        "entity_type": row.entity_type,
        "entity_id": row.uid,
        "field": row.field,
        "resolution": "KeepLocal" if row.local_won else "AcceptRemote",
        "local_version": local,
        "remote_version": remote,
        "winner_stamp": row.winner_stamp,
        "loser_stamp": row.loser_stamp,
        "detected_at": row.detected_at.isoformat(),
    }
