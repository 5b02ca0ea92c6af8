"""The sync engine between in-process members on SQLite and on PostgreSQL: idempotent applies, per-field
conflicts with one winner, deletes that stay deleted, pages and heads, relays without echo, tombstone collection,
and what is refused (foreign uids, skewed clocks, another owner); plus the hybrid logical clock."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from databases import ENGINES, pg_admin_url, pg_execute
from sqlalchemy import insert, select
from sqlalchemy.engine import make_url
from sync_replicas import SESSION, Replica, canonical, sqlite_url

from specai.errors import ConflictError
from specai.graph.sync.change import EdgeEnds, SyncChange
from specai.graph.sync.engine import OwnerMismatchError
from specai.graph.sync.hlc import ClockSkewError, HybridClock, stamp_text
from specai.store.schema import graph_changelog, graph_sessions
from specai.store.types import utcnow

pytestmark = pytest.mark.anyio

NAMES = ("a", "b", "c", "d")
Open = Callable[..., Awaitable[Replica]]


@pytest.fixture(scope="module")
def pg_members() -> Iterator[dict[str, str]]:
    """One PostgreSQL database per member name for this module, dropped afterwards."""
    admin = pg_admin_url()
    tag = secrets.token_hex(4)
    urls = {}
    for name in NAMES:
        database = f"specai_test_sync_{tag}_{name}"
        pg_execute(admin, f'CREATE DATABASE "{database}"')
        urls[name] = make_url(admin).set(database=database).render_as_string(hide_password=False)
    try:
        yield urls
    finally:
        for url in urls.values():
            pg_execute(admin, f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')


@pytest.fixture(params=ENGINES)
def member_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Each member's empty database on the engine under test."""
    if request.param == "sqlite":
        return lambda name: sqlite_url(tmp_path, name)
    urls: dict[str, str] = request.getfixturevalue("pg_members")
    for url in urls.values():
        pg_execute(url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return urls.__getitem__


@pytest.fixture
async def member(member_url: Callable[[str], str]) -> AsyncIterator[Open]:
    """Opens a member with sync enabled for the shared session (unless `enable=False`); closes them all after."""
    opened: list[Replica] = []

    async def open_member(name: str, *, enable: bool = True, **options: Any) -> Replica:
        replica = await Replica.open(name, member_url(name), **options)
        opened.append(replica)
        if enable:
            await replica.enable()
        return replica

    yield open_member
    for replica in opened:
        await replica.close()


async def node_by_uid(replica: Replica, uid: str) -> Any:
    nodes, _ = await replica.visible()
    return next(n for n in nodes if n.uid == uid)


async def exchange(*replicas: Replica) -> None:
    """Every member pulls from every other, twice (enough for everything to reach everyone)."""
    for _ in range(2):
        for receiver in replicas:
            for sender in replicas:
                if sender is not receiver:
                    await receiver.pull(sender)


async def test_the_same_payload_twice_changes_neither_graph_nor_changelog(member: Open) -> None:
    a, b = await member("a"), await member("b")
    x = await a.graph.create_node(SESSION, "entity", "x", {"k": 1})
    y = await a.graph.create_node(SESSION, "concept", "y")
    edge = await a.graph.create_edge(SESSION, x.id, y.id, "RELATES_TO", "knows", {"since": 2020}, 0.5)
    await a.graph.patch_node(x.id, label="x2", properties={"k": None, "m": "new"})
    await a.graph.patch_edge(edge.id, weight=0.25)
    gone = await a.graph.create_node(SESSION, "fact", "gone")
    await a.graph.delete_node(gone.id)
    wire = await b.page(a)
    first = await b.apply(wire, a)
    assert (first.nodes_applied, first.edges_applied, first.tombstones_applied, first.duplicates) == (
        4,
        2,
        1,
        0,
    )
    once = await b.snapshot()
    again = await b.apply(wire, a)
    assert again.duplicates == 7
    assert (again.nodes_applied, again.edges_applied, again.tombstones_applied) == (0, 0, 0)
    assert await b.snapshot() == once  # graph rows, changelog, sync log, heads, states, conflicts
    assert await b.canonical() == await a.canonical()


async def test_values_python_takes_for_equal_stay_apart(member: Open) -> None:
    """1, 1.0 and True (and 0 and False) are different JSON: each change between them is logged and shown."""
    a, b = await member("a"), await member("b")
    node = await a.graph.create_node(SESSION, "entity", "x", {"k": 1, "f": 0})
    x, y = (
        await a.graph.create_node(SESSION, "entity", "y"),
        await a.graph.create_node(SESSION, "entity", "z"),
    )
    edge = await a.graph.create_edge(SESSION, x.id, y.id, "USES", None, {"w": 1})
    await b.pull(a)
    for k, f in ((True, False), (1.0, 0.0), (1, 0)):
        await a.graph.patch_node(node.id, properties={"k": k, "f": f})
        await a.graph.patch_edge(edge.id, properties={"w": k})
        await b.pull(a)
        assert await b.canonical() == await a.canonical()
        shown = await node_by_uid(b, node.uid)
        assert canonical(shown.properties) == canonical({"k": k, "f": f})
    assert len(await a.own_changes(0)) == 4 + 3 * 2


async def test_concurrent_updates_of_one_field_pick_one_winner_and_record_one_conflict(member: Open) -> None:
    a, b = await member("a"), await member("b")
    node = await a.graph.create_node(SESSION, "entity", "start")
    await b.pull(a)
    await a.graph.patch_node(node.id, label="from a")
    await b.graph.patch_node((await node_by_uid(b, node.uid)).id, label="from b")
    stamp_a = (await a.own_changes(1))[0].stamp
    stamp_b = (await b.own_changes(0))[0].stamp
    ranked = sorted([(stamp_a, "from a"), (stamp_b, "from b")], reverse=True)
    winner, loser = (ranked[0][1], ranked[0][0]), (ranked[1][1], ranked[1][0])
    await exchange(a, b)
    await exchange(a, b)  # meeting the same pair again records nothing more
    for replica in (a, b):
        assert (await node_by_uid(replica, node.uid)).label == winner[0]
        page = await replica.sync.conflicts(SESSION)
        assert len(page.items) == 1, replica.name
        conflict = page.items[0]
        assert conflict["entity_id"] == node.uid
        assert conflict["field"] == "label"
        assert {conflict["local_version"], conflict["remote_version"]} == {"from a", "from b"}
        assert conflict["winner_stamp"] == stamp_text(winner[1])
        assert conflict["loser_stamp"] == stamp_text(loser[1])
        local_won = winner[1][2] == replica.name
        assert conflict["resolution"] == ("KeepLocal" if local_won else "AcceptRemote")


async def test_concurrent_updates_of_different_fields_keep_both(member: Open) -> None:
    a, b = await member("a"), await member("b")
    node = await a.graph.create_node(SESSION, "entity", "start", {"kept": True})
    await b.pull(a)
    await a.graph.patch_node(node.id, label="label from a")
    await b.graph.patch_node((await node_by_uid(b, node.uid)).id, properties={"k": "from b"})
    await exchange(a, b)
    for replica in (a, b):
        shown = await node_by_uid(replica, node.uid)
        assert (shown.label, shown.properties) == ("label from a", {"kept": True, "k": "from b"})
        assert (await replica.sync.conflicts(SESSION)).items == []


async def test_a_delete_stays_deleted_against_a_later_concurrent_update(member: Open) -> None:
    a = await member("a")
    b = await member("b", offset_ms=5_000)  # b's update is stamped after a's delete
    node = await a.graph.create_node(SESSION, "entity", "doomed")
    await b.pull(a)
    await a.graph.delete_node(node.id)
    await b.graph.patch_node((await node_by_uid(b, node.uid)).id, label="edited meanwhile")
    assert (await b.own_changes(0))[0].stamp > (await a.own_changes(1))[0].stamp
    await exchange(a, b)
    for replica in (a, b):
        assert node.uid not in (await replica.dump())["nodes"]
        state = (await replica.states())[node.uid]
        assert state["exists"]["v"] is False
        assert state["fields"]["label"]["v"] == "edited meanwhile"  # kept, but shows on no member


async def test_an_update_before_its_create_shows_once_the_create_arrives(member: Open) -> None:
    a, b = await member("a"), await member("b")
    node = await a.graph.create_node(SESSION, "entity", "old", {"k": 1})
    await a.graph.patch_node(node.id, label="new", properties={"k": 2})
    later = await b.page(a, {"a": 1}, limit=1, report=False)  # the page cut after the create
    await b.apply(later, a)
    assert (await b.dump())["nodes"] == {}
    assert await b.vector() == {}
    earlier = await b.page(a, limit=1)
    await b.apply(earlier, a)
    shown = await node_by_uid(b, node.uid)
    assert (shown.label, shown.properties) == ("new", {"k": 2})
    assert await b.vector() == {"a": 2}


async def test_heads_advance_only_over_contiguous_runs(member: Open) -> None:
    a, b = await member("a"), await member("b")
    for label in ("one", "two", "three"):
        await a.graph.create_node(SESSION, "entity", label)
    pages = [await b.page(a, {"a": seq}, limit=1, report=False) for seq in range(3)]
    assert [p["vector_clock"]["versions"] for p in pages] == [{"a": 1}, {"a": 2}, {"a": 3}]
    await b.apply(pages[2], a)
    assert await b.vector() == {}
    await b.apply(pages[1], a)
    assert await b.vector() == {}
    await b.apply(pages[0], a)
    assert await b.vector() == {"a": 3}
    assert await b.canonical() == await a.canonical()


async def test_an_edge_shows_only_while_both_its_ends_exist(member: Open) -> None:
    a, b = await member("a"), await member("b")
    x = await a.graph.create_node(SESSION, "entity", "x", {"p": 1})
    y = await a.graph.create_node(SESSION, "entity", "y")
    await b.pull(a)
    await a.graph.delete_node(x.id)
    edge = await b.graph.create_edge(
        SESSION, (await node_by_uid(b, x.uid)).id, (await node_by_uid(b, y.uid)).id, "RELATES_TO"
    )
    await exchange(a, b)
    for replica in (a, b):
        shown = await replica.dump()
        assert x.uid not in shown["nodes"]
        assert edge.uid not in shown["edges"], replica.name
        assert (await replica.states())[edge.uid]["exists"]["v"] is True  # kept, hidden
    await a.recreate("node", x.uid, {"node_type": "entity", "label": "x again"})
    await exchange(a, b)
    for replica in (a, b):
        shown = await replica.dump()
        assert shown["nodes"][x.uid] == ("entity", "x again", {})  # nothing of its earlier life
        assert shown["edges"][edge.uid][:3] == (x.uid, y.uid, "RELATES_TO")
    assert await a.canonical() == await b.canonical()


async def test_enabling_sync_includes_what_was_there_before(member: Open) -> None:
    a, b = await member("a", enable=False), await member("b")
    x = await a.graph.create_node(SESSION, "entity", "x", {"k": [1, 2]})
    y = await a.graph.create_node(SESSION, "goal", "y")
    await a.graph.create_edge(SESSION, x.id, y.id, "DEPENDS_ON", None, None, 0.75)
    assert await a.own_changes(0) == []
    await a.enable()
    assert [c.operation for c in await a.own_changes(0)] == ["create", "create", "create"]
    await b.pull(a)
    assert await b.canonical() == await a.canonical()
    assert len((await b.dump())["edges"]) == 1


async def test_changes_made_while_sync_was_off_are_picked_up_on_re_enable(member: Open) -> None:
    a, b = await member("a"), await member("b")
    kept = await a.graph.create_node(SESSION, "entity", "kept", {"k": 1})
    doomed = await a.graph.create_node(SESSION, "entity", "doomed")
    other = await a.graph.create_node(SESSION, "entity", "other")
    cut = await a.graph.create_edge(SESSION, kept.id, other.id, "USES")
    await b.pull(a)
    await a.sync.set_enabled(SESSION, None, False)
    await a.graph.patch_node(kept.id, label="kept, renamed", properties={"k": True})  # True, not 1
    await a.graph.delete_node(doomed.id)
    await a.graph.delete_edge(cut.id)
    added = await a.graph.create_node(SESSION, "fact", "added while off")
    before = await a.own_changes(0)
    await a.enable()
    logged = await a.own_changes(before[-1].seq)
    assert sorted((c.uid, c.operation) for c in logged) == sorted(
        [(kept.uid, "update"), (doomed.uid, "delete"), (cut.uid, "delete"), (added.uid, "create")]
    )
    await b.pull(a)
    assert await b.canonical() == await a.canonical()
    assert (await b.dump())["nodes"][kept.uid] == ("entity", "kept, renamed", {"k": True})


async def test_relayed_changes_keep_their_origin_and_nothing_echoes(member: Open) -> None:
    a, b, c = await member("a"), await member("b"), await member("c")
    x = await a.graph.create_node(SESSION, "entity", "x")
    y = await a.graph.create_node(SESSION, "entity", "y")
    await a.graph.create_edge(SESSION, x.id, y.id, "MENTIONS")
    await a.graph.patch_node(x.id, label="x2")
    await b.pull(a)
    await c.pull(b)  # c never talks to a
    for replica in (b, c):
        assert await replica.log_keys() == [("a", 1), ("a", 2), ("a", 3), ("a", 4)]
        assert await replica.vector() == {"a": 4}  # no echo: nothing logged as b's or c's own
        assert {row[4] for row in await replica.changelog()} == {"a"}  # the graph changelog names a
    assert await c.canonical() == await a.canonical()
    await a.pull(b)
    await a.pull(c)
    assert await a.log_keys() == [("a", 1), ("a", 2), ("a", 3), ("a", 4)]
    assert {row[4] for row in await a.changelog()} == {None}  # a's own writes, never re-applied


async def test_pages_of_one_cover_everything(member: Open) -> None:
    a, b, c = await member("a"), await member("b"), await member("c")
    x = await a.graph.create_node(SESSION, "entity", "x")
    y = await b.graph.create_node(SESSION, "entity", "y")
    await a.pull(b)
    edge = await a.graph.create_edge(SESSION, x.id, (await node_by_uid(a, y.uid)).id, "FOLLOWS_FROM")
    await a.graph.patch_edge(edge.id, predicate="then")
    await b.graph.patch_node(y.id, properties={"n": 1})
    await a.pull(b)
    await a.graph.delete_node(x.id)
    total = len(await a.log_keys())
    assert total == 7
    vectors = []
    for _ in range(total):
        wire = await c.page(a, limit=1)
        vectors.append(wire["vector_clock"]["versions"])
        assert len(wire["nodes"]) + len(wire["edges"]) + len(wire["tombstones"]) == 1
        await c.apply(wire, a)
        assert wire["more"] == (len(vectors) < total)
    assert vectors == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}, {"a": 5}, {"b": 1}, {"b": 2}]
    assert await c.vector() == await a.vector() == {"a": 5, "b": 2}
    assert await c.canonical() == await a.canonical()
    assert (await c.page(a, limit=1))["nodes"] == []


async def test_tombstones_go_once_every_member_holds_them_and_nothing_comes_back(member: Open) -> None:
    a, b, c = await member("a"), await member("b"), await member("c")
    kept = await a.graph.create_node(SESSION, "entity", "kept")
    doomed = await a.graph.create_node(SESSION, "entity", "doomed", {"k": 1})
    await a.graph.delete_node(doomed.id)
    members = ["a", "b", "c"]
    await b.pull(a)
    await b.pull(a)  # this request tells a what b holds
    assert await a.sync.collect(SESSION, members) == 0  # c holds nothing yet
    await c.pull(a)
    await c.pull(a)
    assert await a.sync.collect(SESSION, members) == 1
    assert doomed.uid not in await a.states()
    assert [uid for uid in await a.log_keys()] == [("a", 1)]
    assert (await a.sync.collect(SESSION, members)) == 0
    for replica in (b, c):
        await replica.pull(a)
        shown = await replica.dump()
        assert doomed.uid not in shown["nodes"]
        assert kept.uid in shown["nodes"]
        assert (await replica.states())[doomed.uid]["exists"]["v"] is False  # b and c still hold it
    d = await member("d")  # a member that never saw it steps over the hole
    await d.pull(a)
    assert await d.vector() == {"a": 3}
    assert doomed.uid not in await d.states()
    assert await d.canonical() == await a.canonical()


async def test_a_late_page_after_collection_brings_nothing_back(member: Open) -> None:
    a, b = await member("a"), await member("b")
    doomed = await a.graph.create_node(SESSION, "entity", "doomed")
    await a.graph.delete_node(doomed.id)
    create_only = await b.page(a, limit=1)  # a page holding the create, not the delete
    await b.apply(create_only, a)
    await b.pull(a)
    await a.pull(b)  # tells b what a holds
    assert await b.sync.collect(SESSION, ["a", "b"]) == 1
    stats = await b.apply(create_only, a)  # delivered again, late
    assert stats.duplicates == 1
    assert doomed.uid not in (await b.dump())["nodes"]
    assert doomed.uid not in await b.states()


async def test_collection_waits_for_this_member_to_hold_the_whole_history(member: Open) -> None:
    a, b = await member("a"), await member("b")
    await a.graph.create_node(SESSION, "entity", "first")
    doomed = await a.graph.create_node(SESSION, "entity", "doomed")
    await a.graph.delete_node(doomed.id)
    await b.pull(a, limit=1, pages=1)
    create = await b.page(a, limit=1)
    delete = await b.page(a, {"a": 2}, limit=1, report=False)
    await b.apply(delete, a)  # held out of order: b's head for a is still 1
    assert await b.vector() == {"a": 1}
    assert await b.sync.collect(SESSION, ["a", "b"]) == 0  # a sent {a: 3}, but b lacks a:2
    await b.apply(create, a)
    assert doomed.uid not in (await b.dump())["nodes"]
    assert await b.vector() == {"a": 3}


async def test_collection_waits_for_the_create_a_delete_came_without(member: Open) -> None:
    """A page cut after the delete's origin leaves b holding a delete whose create (from c) it has not seen yet:
    forgetting the entity then would let that create revive it on b alone."""
    a, b, c = await member("a"), await member("b"), await member("c")
    doomed = await c.graph.create_node(SESSION, "entity", "made on c")
    await a.pull(c)
    await a.graph.delete_node((await node_by_uid(a, doomed.uid)).id)
    first = await b.pull(a, limit=1, pages=1)  # a's own origin first: the delete, and `more`
    assert first == 1
    assert await b.log_keys() == [("a", 1)]
    await c.pull(a)
    await c.pull(b)  # c tells b it holds {a: 1, c: 1}
    assert await b.sync.collect(SESSION, ["a", "b", "c"]) == 0
    await b.pull(a)
    for replica in (a, b, c):
        assert doomed.uid not in (await replica.dump())["nodes"], replica.name
    assert await b.sync.collect(SESSION, ["a", "b", "c"]) == 1  # the whole history here now


async def test_a_uid_of_another_session_is_refused(member: Open) -> None:
    a, b = await member("a"), await member("b")
    theirs = await b.graph.create_node("elsewhere", "entity", "b's own")
    rogue = SyncChange(
        "node", "create", theirs.uid, "a", 1, a.sync.clock.now(), {}, {"node_type": "entity", "label": "x"}
    )
    wire = (await b.page(a)) | {"nodes": [rogue.wire(SESSION)], "vector_clock": {"versions": {"a": 1}}}
    before = await b.snapshot()
    with pytest.raises(ConflictError) as refused:
        await b.apply(wire, a)
    assert refused.value.details == {"uid": theirs.uid}
    assert await b.snapshot() == before


async def test_an_edge_change_under_a_node_uid_is_refused(member: Open) -> None:
    a, b = await member("a"), await member("b")
    node = await a.graph.create_node(SESSION, "entity", "a node")
    await b.pull(a)
    rogue = SyncChange(
        "edge", "update", node.uid, "a", 2, a.sync.clock.now(), {"a": 1}, {"weight": 0.5},
        ends=EdgeEnds(node.uid, node.uid, "RELATES_TO"),
    )  # fmt: skip
    wire = (await b.page(a)) | {"edges": [rogue.wire(SESSION)], "vector_clock": {"versions": {"a": 2}}}
    before = await b.snapshot()
    with pytest.raises(ConflictError) as refused:
        await b.apply(wire, a)
    assert refused.value.details == {"uid": node.uid}
    assert await b.snapshot() == before


async def test_a_change_beyond_the_skew_limit_is_refused(member: Open) -> None:
    a = await member("a", offset_ms=61_000)  # a's clock runs 61 s ahead
    b = await member("b", max_skew_ms=60_000)
    await a.graph.create_node(SESSION, "entity", "from the future")
    wire = await b.page(a)
    before = await b.snapshot()
    with pytest.raises(ClockSkewError) as refused:
        await b.apply(wire, a)
    assert refused.value.code == "clock_skew"
    assert refused.value.details["origin"] == "a"
    assert refused.value.details["ahead_ms"] > 60_000
    assert await b.snapshot() == before
    assert b.sync.clock.now()[0] < (await a.own_changes(0))[0].stamp[0]  # not adopted
    c = await member("c", offset_ms=30_000)  # within the limit: accepted, and b's clock follows
    await c.graph.create_node(SESSION, "entity", "close enough")
    await b.pull(c)
    assert b.sync.clock.now() > (await c.own_changes(0))[0].stamp
    assert len((await b.dump())["nodes"]) == 1


async def own(replica: Replica, owner_id: str) -> None:
    """Make the shared session owned by `owner_id` on this member."""
    async with replica.store.transaction() as conn:
        await conn.execute(
            insert(graph_sessions).values(session_id=SESSION, owner_id=owner_id, created_at=utcnow())
        )


async def test_a_session_owned_by_another_user_name_is_refused(member: Open) -> None:
    names = {"id-alice": "alice", "id-bob": "bob"}
    ids = {name: owner for owner, name in names.items()}
    a = await member("a", owner_name=names.get, owner_id=ids.get, enable=False)
    await own(a, "id-alice")
    await a.enable()
    await a.graph.create_node(SESSION, "entity", "alice's")
    b = await member("b", owner_name=names.get, owner_id=ids.get, enable=False)
    await own(b, "id-bob")
    await b.enable()
    wire = await b.page(a)
    assert wire["owner"] == "alice"
    before = await b.snapshot()
    with pytest.raises(OwnerMismatchError) as refused:
        await b.apply(wire, a)
    assert refused.value.code == "owner_mismatch"
    assert await b.snapshot() == before
    stranger = await member("c", owner_name=names.get, owner_id={"bob": "id-bob"}.get)  # no alice here
    with pytest.raises(OwnerMismatchError, match="no account here"):
        await stranger.apply(await stranger.page(a), a)
    assert (await stranger.dump())["nodes"] == {}


async def test_an_unowned_session_takes_the_senders_owner_name(member: Open) -> None:
    a = await member(
        "a", owner_name={"id-alice": "alice"}.get, owner_id={"alice": "id-alice"}.get, enable=False
    )
    await own(a, "id-alice")
    await a.enable()
    await a.graph.create_node(SESSION, "entity", "alice's")
    b = await member("b", owner_name={"b-alice": "alice"}.get, owner_id={"alice": "b-alice"}.get)
    await b.pull(a)
    async with b.store.connect() as conn:
        assert await conn.scalar(select(graph_sessions.c.owner_id)) == "b-alice"
    assert await b.canonical() == await a.canonical()


async def test_the_graph_changelog_shows_the_merged_winner_tagged_with_its_origin(member: Open) -> None:
    a, b = await member("a"), await member("b")
    node = await a.graph.create_node(SESSION, "entity", "x", {"k": 1})
    await b.pull(a)
    await a.graph.patch_node(node.id, properties={"k": 2})
    await b.pull(a)
    async with b.store.connect() as conn:
        rows = (
            await conn.execute(
                select(
                    graph_changelog.c.operation, graph_changelog.c.origin, graph_changelog.c.data
                ).order_by(graph_changelog.c.id)
            )
        ).all()
    assert [(r.operation, r.origin, r.data["properties"]) for r in rows] == [
        ("create", "a", {"k": 1}),
        ("update", "a", {"k": 2}),
    ]


# --- the hybrid logical clock ------------------------------------------------------------------------------------


def test_the_clock_never_goes_back_and_never_repeats() -> None:
    walls = iter([1000, 1000, 999, 500, 1001, 1001])
    clock = HybridClock("a", wall=lambda: next(walls))
    stamps = [clock.now() for _ in range(6)]
    assert stamps == [
        (1000, 0, "a"),
        (1000, 1, "a"),
        (1000, 2, "a"),
        (1000, 3, "a"),
        (1001, 0, "a"),
        (1001, 1, "a"),
    ]
    assert stamps == sorted(set(stamps))


def test_observing_a_stamp_moves_the_clock_past_it() -> None:
    clock = HybridClock("a", wall=lambda: 1000)
    clock.observe((5000, 7, "z"))
    assert clock.now() == (5000, 8, "a")
    clock.observe((10, 0, "z"))  # an old stamp changes nothing
    assert clock.now() == (5000, 9, "a")
    assert clock.now(after=(6000, 3, "b")) == (6000, 4, "a")


def test_stamps_tie_break_by_origin_and_the_skew_limit_holds() -> None:
    assert (1000, 0, "b") > (1000, 0, "a")
    assert stamp_text((1000, 0, "b")) > stamp_text((1000, 0, "a")) > stamp_text((999, 99, "z"))
    clock = HybridClock("a", max_skew_ms=60_000, wall=lambda: 1_000_000)
    clock.check((1_060_000, 0, "b"))  # exactly at the limit
    with pytest.raises(ClockSkewError):
        clock.check((1_060_001, 0, "b"))
    assert clock.now() == (1_000_000, 0, "a")  # checking adopts nothing
