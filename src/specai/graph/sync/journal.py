"""The per-origin log of a synced session, its heads (the version vector) and its entities' register state.

Every change applied here, local or remote, is kept under its own `(origin, seq)` (relays keep the origin), so a
peer can pull `seq > cursor` per origin from any member. A head is the highest seq of an origin up to which this
member holds every change: it only moves over contiguous runs, in the transaction that stored them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.graph.sync.change import Kind, SyncChange, from_wire
from specai.graph.sync.registers import State, alive, empty
from specai.store.engine import insert_ignore, upsert
from specai.store.schema import graph_sync_entities, graph_sync_heads, graph_sync_log

Vector = dict[str, int]
_STATE_COLUMNS = ("session_id", "kind", "source_uid", "target_uid", "alive", "state")
_CHUNK = 500  # ids per IN (...) list


async def heads(conn: AsyncConnection, session_id: str) -> Vector:
    """The session's version vector: origin -> highest contiguous seq held here."""
    rows = await conn.execute(
        select(graph_sync_heads.c.origin, graph_sync_heads.c.head).where(
            graph_sync_heads.c.session_id == session_id
        )
    )
    return {row.origin: int(row.head) for row in rows if row.head > 0}


async def next_seq(conn: AsyncConnection, session_id: str, origin: str, count: int = 1) -> int:
    """Number this member's next `count` writes of the session (in their transaction, under the session lock);
    returns the first number."""
    await conn.execute(
        insert_ignore(conn, graph_sync_heads, "session_id", "origin").values(
            session_id=session_id, origin=origin, head=0
        )
    )
    seq = await conn.scalar(
        update(graph_sync_heads)
        .where(graph_sync_heads.c.session_id == session_id, graph_sync_heads.c.origin == origin)
        .values(head=graph_sync_heads.c.head + count)
        .returning(graph_sync_heads.c.head)
    )
    return int(seq or 0) - count + 1


async def known(
    conn: AsyncConnection, session_id: str, changes: Sequence[SyncChange]
) -> set[tuple[str, int]]:
    """Which of `changes` this member already holds."""
    found: set[tuple[str, int]] = set()
    by_origin: dict[str, list[int]] = {}
    for change in changes:
        by_origin.setdefault(change.origin, []).append(change.seq)
    for origin, seqs in by_origin.items():
        for chunk in _chunks(seqs):
            rows = await conn.execute(
                select(graph_sync_log.c.seq).where(
                    graph_sync_log.c.session_id == session_id,
                    graph_sync_log.c.origin == origin,
                    graph_sync_log.c.seq.in_(chunk),
                )
            )
            found.update((origin, int(row.seq)) for row in rows)
    return found


async def append(conn: AsyncConnection, session_id: str, changes: Sequence[SyncChange]) -> None:
    """Keep `changes` in the log (ones already there are left as they are)."""
    if changes:
        await conn.execute(
            insert_ignore(conn, graph_sync_log, "session_id", "origin", "seq"),
            [
                {
                    "session_id": session_id,
                    "origin": c.origin,
                    "seq": c.seq,
                    "uid": c.uid,
                    "body": {"kind": c.kind, **c.wire(session_id)},
                }
                for c in changes
            ],
        )


async def advance(
    conn: AsyncConnection, session_id: str, origins: Iterable[str], since: Vector, through: Vector
) -> Vector:
    """Move each origin's head: to `through` when the payload started at or below it, then over every
    contiguous seq held; returns the new heads of `origins`."""
    current = await heads(conn, session_id)
    moved: Vector = {}
    for origin in sorted(set(origins)):
        head = current.get(origin, 0)
        if origin in through and since.get(origin, 0) <= head:
            head = max(head, through[origin])
        while True:
            held = (
                await conn.execute(
                    select(graph_sync_log.c.seq)
                    .where(
                        graph_sync_log.c.session_id == session_id,
                        graph_sync_log.c.origin == origin,
                        graph_sync_log.c.seq > head,
                    )
                    .order_by(graph_sync_log.c.seq)
                    .limit(_CHUNK)
                )
            ).scalars()
            start = head
            for seq in held:
                if seq != head + 1:
                    break
                head = seq
            if head == start or head - start < _CHUNK:
                break
        if head != current.get(origin, 0):
            await conn.execute(
                upsert(conn, graph_sync_heads, ("session_id", "origin"), ("head",)).values(
                    session_id=session_id, origin=origin, head=head
                )
            )
        moved[origin] = head
    return moved


async def past(
    conn: AsyncConnection, session_id: str, vector: Vector, limit: int
) -> tuple[list[SyncChange], Vector, bool]:
    """Up to `limit` held changes past `vector`, oldest seq first per origin; the vector they bring a receiver
    to (`through`), and whether more remain. Only changes up to this member's heads are offered."""
    mine = await heads(conn, session_id)
    changes: list[SyncChange] = []
    through: Vector = {}
    more = False
    for origin in sorted(mine):
        start, head = vector.get(origin, 0), mine[origin]
        if head <= start:
            continue
        room = limit - len(changes)
        if room <= 0:
            more = True
            break
        rows = (
            await conn.execute(
                select(graph_sync_log.c.seq, graph_sync_log.c.body)
                .where(
                    graph_sync_log.c.session_id == session_id,
                    graph_sync_log.c.origin == origin,
                    graph_sync_log.c.seq > start,
                    graph_sync_log.c.seq <= head,
                )
                .order_by(graph_sync_log.c.seq)
                .limit(room + 1)
            )
        ).all()
        if len(rows) > room:
            rows = rows[:room]
            through[origin] = int(rows[-1].seq)
            more = True
        else:
            through[origin] = head  # every seq up to the head is here, or was collected everywhere
        changes.extend(_change(row.body) for row in rows)
    return changes, through, more


def _change(body: dict[str, Any]) -> SyncChange:
    kind: Kind = body["kind"]
    return from_wire(kind, body, tombstone="deleted_by" in body)


async def states(conn: AsyncConnection, uids: Iterable[str]) -> dict[str, State]:
    """The register state of each uid known here."""
    found: dict[str, State] = {}
    for chunk in _chunks(sorted(set(uids))):
        rows = await conn.execute(
            select(graph_sync_entities.c.uid, graph_sync_entities.c.state).where(
                graph_sync_entities.c.uid.in_(chunk)
            )
        )
        found.update((row.uid, row.state) for row in rows)
    return found


async def state(conn: AsyncConnection, uid: str) -> State:
    """One entity's register state (empty when unknown)."""
    return (await states(conn, [uid])).get(uid) or empty()


async def save(
    conn: AsyncConnection, session_id: str, kinds: dict[str, Kind], saved: dict[str, State]
) -> None:
    """Store the register state of these entities."""
    rows = []
    for uid, entity in saved.items():
        ends = entity.get("ends") or {}
        rows.append(
            {
                "uid": uid,
                "session_id": session_id,
                "kind": kinds[uid],
                "source_uid": ends.get("source_uid"),
                "target_uid": ends.get("target_uid"),
                "alive": alive(entity),
                "state": entity,
            }
        )
    if rows:
        await conn.execute(upsert(conn, graph_sync_entities, ("uid",), _STATE_COLUMNS), rows)


async def edges_touching(conn: AsyncConnection, node_uids: Sequence[str]) -> dict[str, State]:
    """Every known edge with an endpoint among `node_uids`."""
    found: dict[str, State] = {}
    for chunk in _chunks(list(node_uids)):
        rows = await conn.execute(
            select(graph_sync_entities.c.uid, graph_sync_entities.c.state).where(
                graph_sync_entities.c.kind == "edge",
                or_(graph_sync_entities.c.source_uid.in_(chunk), graph_sync_entities.c.target_uid.in_(chunk)),
            )
        )
        found.update((row.uid, row.state) for row in rows)
    return found


async def collectable(conn: AsyncConnection, session_id: str, floor: Vector) -> list[str]:
    """Deleted entities whose every logged change is at or below `floor` (what every known member holds), their
    create among them: a delete held without its create (a page cut between their origins) must wait, or that
    create arriving later would revive the entity here alone."""
    dead = (
        (
            await conn.execute(
                select(graph_sync_entities.c.uid).where(
                    graph_sync_entities.c.session_id == session_id, graph_sync_entities.c.alive.is_(False)
                )
            )
        )
        .scalars()
        .all()
    )
    gone: list[str] = []
    for chunk in _chunks(list(dead)):
        rows = await conn.execute(
            select(
                graph_sync_log.c.uid, graph_sync_log.c.origin, graph_sync_log.c.seq, graph_sync_log.c.body
            ).where(graph_sync_log.c.session_id == session_id, graph_sync_log.c.uid.in_(chunk))
        )
        blocked: set[str] = set()
        created: set[str] = set()
        for row in rows:
            if int(row.seq) > floor.get(row.origin, 0):
                blocked.add(row.uid)
            if row.body.get("operation") == "create":
                created.add(row.uid)
        gone.extend(uid for uid in chunk if uid in created and uid not in blocked)
    return gone


async def forget(conn: AsyncConnection, session_id: str, uids: Sequence[str]) -> None:
    """Drop collected entities: their state and every logged change of them."""
    for chunk in _chunks(list(uids)):
        await conn.execute(
            delete(graph_sync_log).where(
                and_(graph_sync_log.c.session_id == session_id, graph_sync_log.c.uid.in_(chunk))
            )
        )
        await conn.execute(delete(graph_sync_entities).where(graph_sync_entities.c.uid.in_(chunk)))


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]
