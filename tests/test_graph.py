"""The knowledge graph on real SQLite and PostgreSQL: CRUD, validation, versions, the changelog and following it."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, insert, select, update

from specai.config import Settings
from specai.errors import (
    InvalidNodeTypeError,
    InvalidRequestError,
    NotFoundError,
    UnprocessableError,
    VersionConflictError,
)
from specai.graph.model import NODE_TYPES, Change, GraphPlan, PlannedEdge, PlannedNode
from specai.graph.store import GraphStore
from specai.store import Store
from specai.store.migrations import SCHEMA_VERSION
from specai.store.schema import graph_changelog, graph_edges, graph_nodes, sessions
from specai.store.types import utcnow

pytestmark = pytest.mark.anyio


@pytest.fixture
def graph(store: Store) -> GraphStore:
    return GraphStore(store)


async def all_changes(graph: GraphStore, session: str = "s1") -> list[Change]:
    return await graph.changes(session, 0, limit=10_000)


# --- nodes -------------------------------------------------------------------------------------------------------


async def test_node_round_trip_keeps_stored_timestamps(graph: GraphStore) -> None:
    before = utcnow()
    node = await graph.create_node("s1", "Entity", "Alice", {"age": 30})
    await asyncio.sleep(0.01)
    fetched = await graph.get_node(node.id)
    assert fetched == node
    assert fetched.node_type == "entity"
    assert fetched.version == 1
    assert uuid.UUID(fetched.uid).version == 4
    assert before <= fetched.created_at <= utcnow()
    assert fetched.created_at.utcoffset() == dt.timedelta(0)
    shape = fetched.as_dict()
    assert set(shape) == {
        "id",
        "uid",
        "version",
        "session_id",
        "node_type",
        "label",
        "properties",
        "created_at",
        "updated_at",
    }
    assert (
        dt.datetime.fromisoformat(shape["created_at"]) == node.created_at
    )  # RFC 3339, stored value not "now"
    assert shape["created_at"].endswith("+00:00")


async def test_properties_default_to_an_empty_object(graph: GraphStore) -> None:
    assert (await graph.create_node("s1", "fact", "", None)).properties == {}


@pytest.mark.parametrize("bad", ["person", "", 3, None])
async def test_unknown_node_type_lists_the_valid_ones(graph: GraphStore, bad: object) -> None:
    with pytest.raises(InvalidNodeTypeError) as caught:
        await graph.create_node("s1", bad, "x")  # type: ignore[arg-type]
    assert caught.value.status == 422
    assert caught.value.code == "invalid_node_type"
    assert caught.value.details == {"valid": list(NODE_TYPES)}
    assert await all_changes(graph) == []


@pytest.mark.parametrize("bad", [[1, 2], "text", 5, True])
async def test_properties_must_be_an_object(graph: GraphStore, bad: object) -> None:
    with pytest.raises(UnprocessableError, match="properties must be a JSON object"):
        await graph.create_node("s1", "entity", "x", bad)  # type: ignore[arg-type]


async def test_list_filters_by_type_newest_first_and_pages(graph: GraphStore) -> None:
    made = [await graph.create_node("s1", "entity" if i % 2 else "concept", f"n{i}") for i in range(7)]
    await graph.create_node("other", "entity", "elsewhere")
    page = await graph.list_nodes("s1", limit=3)
    assert [n.id for n in page.items] == [n.id for n in reversed(made)][:3]
    seen = list(page.items)
    while page.next_cursor is not None:
        page = await graph.list_nodes("s1", limit=3, cursor=page.next_cursor)
        seen += page.items
    assert [n.id for n in seen] == [n.id for n in reversed(made)]
    entities = await graph.list_nodes("s1", node_type="ENTITY")
    assert {n.label for n in entities.items} == {"n1", "n3", "n5"}
    assert entities.next_cursor is None
    assert (await graph.list_nodes("s1", limit=7)).next_cursor is None  # exactly full: no empty next page


@pytest.mark.parametrize(("limit", "cursor"), [(0, None), (1001, None), (10, "abc"), (10, "-1")])
async def test_bad_limit_or_cursor_is_refused(graph: GraphStore, limit: int, cursor: str | None) -> None:
    with pytest.raises(InvalidRequestError):
        await graph.list_nodes("s1", limit=limit, cursor=cursor)


async def test_put_replaces_properties_and_counts_versions(graph: GraphStore) -> None:
    node = await graph.create_node("s1", "entity", "repo", {"stars": 1, "lang": "py"})
    changed = await graph.replace_properties(node.id, {"stars": 42})
    assert changed.properties == {"stars": 42}
    assert changed.version == 2
    assert changed.created_at == node.created_at
    assert changed.updated_at >= node.updated_at
    assert await graph.get_node(node.id) == changed


async def test_stale_version_is_a_conflict_and_changes_nothing(graph: GraphStore) -> None:
    node = await graph.create_node("s1", "entity", "doc", {"v": "a"})
    await graph.replace_properties(node.id, {"v": "b"}, expected_version=1)
    with pytest.raises(VersionConflictError) as caught:
        await graph.replace_properties(node.id, {"v": "c"}, expected_version=1)
    assert caught.value.status == 409
    assert caught.value.details == {"current_version": 2}
    assert (await graph.get_node(node.id)).properties == {"v": "b"}


async def test_concurrent_versioned_writers_cannot_both_win(graph: GraphStore) -> None:
    node = await graph.create_node("s1", "entity", "counter", {"n": 0})
    outcomes = await asyncio.gather(
        *(graph.replace_properties(node.id, {"n": i}, expected_version=1) for i in range(1, 6)),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(o, VersionConflictError) for o in outcomes if o not in winners)
    assert (await graph.get_node(node.id)).version == 2


async def test_patch_renames_and_merges_properties(graph: GraphStore) -> None:
    node = await graph.create_node("s1", "entity", "old", {"a": 1, "b": 2})
    changed = await graph.patch_node(node.id, label="new", properties={"b": None, "c": 3})
    assert (changed.label, changed.properties, changed.version) == ("new", {"a": 1, "c": 3}, 2)
    only_label = await graph.patch_node(node.id, label="newer", expected_version=2)
    assert only_label.properties == {"a": 1, "c": 3}
    assert only_label.version == 3


async def test_missing_ids_are_not_found(graph: GraphStore) -> None:
    for call in (
        graph.get_node(999),
        graph.replace_properties(999, {}),
        graph.patch_node(999, label="x"),
        graph.delete_node(999),
        graph.get_edge(999),
        graph.delete_edge(999),
        graph.patch_edge(999, weight=0.5),
    ):
        with pytest.raises(NotFoundError):
            await call


async def test_deleting_a_node_deletes_its_edges_in_one_transaction(graph: GraphStore, store: Store) -> None:
    a, b, c = [await graph.create_node("s1", "entity", name) for name in "abc"]
    await graph.create_edge("s1", a.id, b.id, "knows")
    await graph.create_edge("s1", c.id, a.id, "knows")
    kept = await graph.create_edge("s1", b.id, c.id, "knows")
    assert await graph.delete_node(a.id) == 2
    edges = await graph.list_edges("s1")
    assert [e.id for e in edges.items] == [kept.id]
    deletes = [(ch.entity_type, ch.operation) for ch in await all_changes(graph)][-3:]
    assert deletes == [("edge", "delete"), ("edge", "delete"), ("node", "delete")]
    with pytest.raises(NotFoundError):
        await graph.get_node(a.id)


# --- edges -------------------------------------------------------------------------------------------------------


async def test_edge_round_trip_and_filters(graph: GraphStore) -> None:
    a, b, c = [await graph.create_node("s1", "entity", name) for name in "abc"]
    ab = await graph.create_edge("s1", a.id, b.id, "relates_to", "knows", {"since": 2020}, 0.95)
    ac = await graph.create_edge("s1", a.id, c.id, "my_edge")
    bc = await graph.create_edge("s1", b.id, c.id, "DEPENDS_ON", weight=0)
    assert (ab.edge_type, ab.predicate, ab.properties, ab.weight) == (
        "RELATES_TO",
        "knows",
        {"since": 2020},
        0.95,
    )
    assert (ac.edge_type, ac.weight, ac.properties) == ("MY_EDGE", 1.0, None)
    assert await graph.get_edge(ab.id) == ab
    assert (await graph.get_edge(ab.id)).weight == 0.95  # stored as a double: no float32 0.949999988
    assert [e.id for e in (await graph.list_edges("s1", source_id=a.id)).items] == [ac.id, ab.id]
    assert [e.id for e in (await graph.list_edges("s1", target_id=c.id)).items] == [bc.id, ac.id]
    assert [e.id for e in (await graph.list_edges("s1", source_id=a.id, target_id=c.id)).items] == [ac.id]
    assert [e.id for e in (await graph.list_edges("s1", edge_type="depends_on")).items] == [bc.id]
    assert (await graph.list_edges("other")).items == []


@pytest.mark.parametrize("weight", [-0.1, 1.5, "heavy", True, float("nan")])
async def test_weight_must_be_from_0_to_1(graph: GraphStore, weight: object) -> None:
    a = await graph.create_node("s1", "entity", "a")
    with pytest.raises(UnprocessableError, match="weight"):
        await graph.create_edge("s1", a.id, a.id, "USES", weight=weight)


@pytest.mark.parametrize("kind", ["", "has space", "1ST", "x" * 65, None])
async def test_edge_type_must_be_a_name(graph: GraphStore, kind: object) -> None:
    a = await graph.create_node("s1", "entity", "a")
    with pytest.raises(UnprocessableError, match="edge_type"):
        await graph.create_edge("s1", a.id, a.id, kind)  # type: ignore[arg-type]


async def test_edge_endpoints_must_exist_in_the_same_session(graph: GraphStore) -> None:
    a = await graph.create_node("s1", "entity", "a")
    foreign = await graph.create_node("s2", "entity", "b")
    with pytest.raises(NotFoundError, match="target node 999"):
        await graph.create_edge("s1", a.id, 999, "USES")
    with pytest.raises(UnprocessableError, match="another session"):
        await graph.create_edge("s1", a.id, foreign.id, "USES")
    with pytest.raises(UnprocessableError, match="another session"):
        await graph.create_edge("s2", a.id, foreign.id, "USES")
    assert (await graph.list_edges("s1")).items == []
    assert (await graph.list_edges("s2")).items == []


async def test_patch_edge_changes_fields_and_checks_version(graph: GraphStore) -> None:
    a = await graph.create_node("s1", "entity", "a")
    edge = await graph.create_edge("s1", a.id, a.id, "USES", properties={"x": 1})
    changed = await graph.patch_edge(edge.id, predicate="calls", weight=0.5, properties={"y": 2})
    assert (changed.predicate, changed.weight, changed.properties, changed.version) == (
        "calls",
        0.5,
        {"x": 1, "y": 2},
        2,
    )
    with pytest.raises(VersionConflictError):
        await graph.patch_edge(edge.id, weight=0.1, expected_version=1)


# --- changelog ---------------------------------------------------------------------------------------------------


async def test_every_write_is_logged_with_a_snapshot(graph: GraphStore) -> None:
    a = await graph.create_node("s1", "entity", "a")
    b = await graph.create_node("s1", "entity", "b")
    edge = await graph.create_edge("s1", a.id, b.id, "USES")
    await graph.patch_node(a.id, label="A")
    await graph.patch_edge(edge.id, weight=0.2)
    await graph.delete_edge(edge.id)
    await graph.replace_properties(b.id, {"k": 1})
    await graph.delete_node(b.id)
    log = await all_changes(graph)
    assert [(c.entity_type, c.entity_id, c.operation, c.version) for c in log] == [
        ("node", a.id, "create", 1),
        ("node", b.id, "create", 1),
        ("edge", edge.id, "create", 1),
        ("node", a.id, "update", 2),
        ("edge", edge.id, "update", 2),
        ("edge", edge.id, "delete", 2),
        ("node", b.id, "update", 2),
        ("node", b.id, "delete", 2),
    ]
    assert [c.id for c in log] == sorted(c.id for c in log)
    assert log[3].data is not None
    assert log[3].data["label"] == "A"
    assert log[-1].data is not None
    assert log[-1].data["properties"] == {"k": 1}
    assert log[0].entity_uid == a.uid
    assert set(log[0].as_dict()) == {
        "id",
        "session_id",
        "entity_type",
        "entity_id",
        "entity_uid",
        "operation",
        "version",
        "timestamp",
        "data",
        "origin",
    }
    assert log[0].origin is None  # made here, not synced from another member


async def test_failed_writes_log_nothing(graph: GraphStore) -> None:
    a = await graph.create_node("s1", "entity", "a")
    for call in (
        graph.create_edge("s1", a.id, 12345, "USES"),
        graph.replace_properties(a.id, {}, expected_version=7),
        graph.create_node("s1", "nonsense", "x"),
    ):
        with pytest.raises((NotFoundError, VersionConflictError, UnprocessableError)):
            await call
    assert len(await all_changes(graph)) == 1


async def test_changes_are_per_session_and_resume_after_an_id(graph: GraphStore) -> None:
    for i in range(5):
        await graph.create_node("s1" if i % 2 == 0 else "s2", "entity", f"n{i}")
    s1 = await all_changes(graph, "s1")
    assert [c.data["label"] for c in s1 if c.data] == ["n0", "n2", "n4"]
    after_first = await graph.changes("s1", s1[0].id)
    assert after_first == s1[1:]


async def test_follow_wakes_within_100ms_of_a_commit(graph: GraphStore) -> None:
    start = await graph.latest_change_id()
    received: list[tuple[float, Change]] = []

    async def watch() -> None:
        async for change in graph.follow("s1", start, poll_secs=30):
            received.append((time.monotonic(), change))
            if len(received) == 3:
                return

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    written = []
    for i in range(3):
        node = await graph.create_node("s1", "entity", f"n{i}")
        written.append((time.monotonic(), node.id))
        await asyncio.sleep(0.02)
    await asyncio.wait_for(watcher, 5)
    assert [c.entity_id for _, c in received] == [node_id for _, node_id in written]
    lags = [got - sent for (sent, _), (got, _) in zip(written, received, strict=True)]
    assert max(lags) < 1.0, (
        lags
    )  # loose: the poll is 30 s, so waking at all proves the push; bench_graph times it


async def test_follow_sees_writes_from_another_process_by_polling(db_settings: Settings) -> None:
    first, second = await Store.open(db_settings), await Store.open(db_settings)
    try:
        reader, writer = GraphStore(first), GraphStore(second)  # separate notifiers, like two processes

        async def next_change() -> Change:
            async for change in reader.follow("s1", 0, poll_secs=0.05):
                return change
            raise AssertionError("follow ended")

        watcher = asyncio.create_task(next_change())
        await asyncio.sleep(0.1)
        node = await writer.create_node("s1", "entity", "remote")
        assert (await asyncio.wait_for(watcher, 5)).entity_id == node.id
    finally:
        await first.close()
        await second.close()


async def test_concurrent_writers_commit_changelog_ids_in_order(graph: GraphStore) -> None:
    """A watcher reading `id > cursor` while writers race must end up with every change exactly once."""
    seen: list[int] = []
    cursor = 0
    done = asyncio.Event()

    async def write(i: int) -> None:
        await graph.create_node("s1", "entity", f"n{i}", {"i": i})

    async def poll() -> None:
        nonlocal cursor
        while not done.is_set() or await graph.changes("s1", cursor):
            for change in await graph.changes("s1", cursor):
                seen.append(change.id)
                cursor = change.id

    poller = asyncio.create_task(poll())
    await asyncio.gather(*(write(i) for i in range(60)))
    done.set()
    await asyncio.wait_for(poller, 10)
    assert seen == [c.id for c in await all_changes(graph)]
    assert len(seen) == 60


async def test_prune_removes_old_changes_and_remembers_how_far(graph: GraphStore, store: Store) -> None:
    for i in range(3):
        await graph.create_node("s1", "entity", f"n{i}")
    log = await all_changes(graph)
    async with store.transaction() as conn:
        await conn.execute(
            update(graph_changelog)
            .where(graph_changelog.c.id <= log[1].id)
            .values(created_at=utcnow() - dt.timedelta(days=40))
        )
    assert await graph.prune(dt.timedelta(days=30)) == 2
    assert await graph.pruned_through() == log[1].id
    assert await all_changes(graph) == log[2:]
    assert await graph.prune(dt.timedelta(days=30)) == 0
    assert await graph.pruned_through() == log[1].id
    # ids are never reused, even when every row is pruned
    async with store.transaction() as conn:
        await conn.execute(update(graph_changelog).values(created_at=utcnow() - dt.timedelta(days=40)))
    await graph.prune(dt.timedelta(days=30))
    await graph.create_node("s1", "entity", "after")
    assert (await all_changes(graph))[0].id > log[-1].id
    assert await graph.latest_change_id() > log[-1].id


# --- search and generated graphs --------------------------------------------------------------------------------


async def test_search_matches_labels_and_properties(graph: GraphStore) -> None:
    await graph.create_node("s1", "entity", "Alice Smith", {"city": "Paris"})
    await graph.create_node("s1", "concept", "Graphs", {"note": "100% useful"})
    await graph.create_node("s2", "entity", "Alice elsewhere")
    assert [n.label for n in await graph.search_nodes("s1", "alice")] == ["Alice Smith"]
    assert [n.label for n in await graph.search_nodes("s1", "PARIS")] == ["Alice Smith"]
    assert [n.label for n in await graph.search_nodes("s1", "100%")] == ["Graphs"]
    assert [n.label for n in await graph.search_nodes("s1", "%")] == ["Graphs"]  # wildcards are literal
    assert len(await graph.search_nodes("s1", "")) == 2


def _plan(docs: list[str]) -> GraphPlan:
    nodes = [PlannedNode("repository", "entity", "repo", {"kind": "Repository"})]
    nodes += [PlannedNode(f"doc:{d}", "fact", d, {"kind": "Documentation"}) for d in docs]
    edges = [PlannedEdge(f"doc:{d}", "repository", "RELATES_TO", "documents", 0.85) for d in docs]
    return GraphPlan("repository", nodes, edges, "test-plugin")


async def test_applying_a_plan_twice_creates_nothing_new(graph: GraphStore) -> None:
    bystander = await graph.create_node("s1", "entity", "mine", {"bootstrap_key": "repository"})
    first = await graph.apply_plan("s1", _plan(["README.md", "docs/a.md"]))
    assert (first.nodes_created, first.edges_created) == (3, 2)
    second = await graph.apply_plan("s1", _plan(["README.md", "docs/a.md"]))
    assert (second.nodes_created, second.nodes_updated, second.edges_created, second.nodes_removed) == (
        0,
        0,
        0,
        0,
    )
    assert second.root_node_id == first.root_node_id
    third = await graph.apply_plan("s1", _plan(["README.md", "docs/b.md"]))
    assert (third.nodes_created, third.nodes_removed, third.edges_created, third.edges_removed) == (
        1,
        1,
        1,
        1,
    )
    assert len((await graph.list_nodes("s1")).items) == 4  # root, two docs, and the bystander
    assert (await graph.get_node(bystander.id)).label == "mine"


# --- schema upgrade ----------------------------------------------------------------------------------------------


async def test_upgrading_a_version_1_database_keeps_its_data(db_settings: Settings) -> None:
    old = await Store.open(db_settings, migrate=False)
    try:
        assert await old.migrate(target=1) == 1
        now = utcnow()
        async with old.transaction() as conn:
            await conn.execute(
                insert(sessions).values(
                    id="kept", owner="alice", agent="default", created_at=now, updated_at=now
                )
            )
        assert await old.migrate() == SCHEMA_VERSION
        async with old.connect() as conn:
            assert await conn.scalar(select(sessions.c.owner).where(sessions.c.id == "kept")) == "alice"
            assert await conn.scalar(select(func.count()).select_from(graph_nodes)) == 0
            assert await conn.scalar(select(func.count()).select_from(graph_edges)) == 0
        node = await GraphStore(old).create_node("kept", "entity", "after upgrade")
        assert (await GraphStore(old).get_node(node.id)).label == "after upgrade"
    finally:
        await old.close()


async def test_many_watchers_share_one_reader_and_each_gets_every_change_once(graph: GraphStore) -> None:
    start = await graph.latest_change_id()
    total, watchers = 30, 20
    streams = [graph.follow("fan", start, poll_secs=30) for _ in range(watchers)]
    firsts = [asyncio.ensure_future(anext(stream)) for stream in streams]
    await asyncio.sleep(0.05)
    made = [(await graph.create_node("fan", "entity", f"n{i}")).id for i in range(total)]

    async def rest(stream: AsyncIterator[Change], first: asyncio.Future[Change]) -> list[int]:
        got = [(await first).entity_id]
        while len(got) < total:
            got.append((await anext(stream)).entity_id)
        return got

    results = await asyncio.wait_for(
        asyncio.gather(*(rest(s, f) for s, f in zip(streams, firsts, strict=True))), 10
    )
    assert all(result == made for result in results)
    assert len(graph._feed._readers) == 1  # one database reader for the session, whatever the watcher count
    for stream in streams:
        await stream.aclose()
    assert graph._feed._readers == {}


async def test_a_watcher_that_falls_far_behind_catches_up_without_gaps(graph: GraphStore) -> None:
    start = await graph.latest_change_id()
    stream = graph.follow("slow", start, poll_secs=30)
    first = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    made = []
    for i in range(150):  # more commits than a watcher's inbox holds while it reads nothing
        made.append((await graph.create_node("slow", "entity", f"n{i}")).id)
        await asyncio.sleep(0)
    got = [(await asyncio.wait_for(first, 5)).entity_id]
    while len(got) < len(made):
        got.append((await asyncio.wait_for(anext(stream), 5)).entity_id)
    assert got == made
    await stream.aclose()


async def test_a_plan_updates_changed_edges_and_refuses_broken_plans(graph: GraphStore) -> None:
    await graph.apply_plan("s1", _plan(["README.md"]))
    plan = _plan(["README.md"])
    changed = GraphPlan(
        plan.root,
        plan.nodes,
        [PlannedEdge("doc:README.md", "repository", "RELATES_TO", "describes", 0.5)] * 2,
        plan.source,
    )
    await graph.apply_plan("s1", changed)
    [edge] = (await graph.list_edges("s1")).items
    assert (edge.predicate, edge.weight, edge.version) == ("describes", 0.5, 2)
    for broken in (
        GraphPlan("repository", [*plan.nodes, plan.nodes[0]], [], "p"),
        GraphPlan("nowhere", plan.nodes, [], "p"),
        GraphPlan("repository", plan.nodes, [PlannedEdge("doc:x", "repository", "USES")], "p"),
    ):
        with pytest.raises(ValueError, match="graph plan"):
            await graph.apply_plan("s1", broken)
