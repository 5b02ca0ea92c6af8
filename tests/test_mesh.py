"""The mesh core on real SQLite and PostgreSQL: members, the leader, and the per-recipient message queue."""

from __future__ import annotations

import asyncio
import datetime as dt
import stat
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from specai.errors import (
    CorruptFileError,
    ForbiddenError,
    InvalidRequestError,
    PayloadTooLargeError,
    QuotaExceededError,
    UnknownInstanceError,
    UnprocessableError,
)
from specai.mesh.peer_token import peer_principal
from specai.mesh.queue import MAX_ACK, MessageQueue, parse_cursor, parse_message_type
from specai.mesh.registry import MemberInfo, MeshRegistry, elect, load_instance_id
from specai.store import Store
from specai.store.schema import mesh_deliveries, mesh_members, mesh_messages
from specai.store.types import utcnow
from specai.users.access import Principal

pytestmark = pytest.mark.anyio
ALICE = Principal("u-alice", "alice", "mesh", "mesh")  # a mesh account
BOB = Principal("u-bob", "bob", "mesh", "mesh")  # another mesh account: a rogue one
ADMIN = Principal("u-root", "root", "admin", "admin")


def info(instance_id: str, port: int = 4000) -> MemberInfo:
    return MemberInfo(instance_id, "127.0.0.1", port, ["query"], ["default"], fingerprint="AA")


@pytest.fixture
async def registry(store: Store) -> MeshRegistry:
    reg = MeshRegistry(store, "self", leader_timeout=15)
    await reg.register(info("self", 3000))
    return reg


@pytest.fixture
def queue(store: Store) -> MessageQueue:
    return MessageQueue(store, max_payload_bytes=1024)


async def age(store: Store, instance_id: str, seconds: float) -> None:
    async with store.transaction() as conn:
        await conn.execute(
            update(mesh_members)
            .where(mesh_members.c.instance_id == instance_id)
            .values(last_heartbeat=utcnow() - dt.timedelta(seconds=seconds))
        )


# --- identity ----------------------------------------------------------------------------------------------------


def test_instance_id_is_created_once_private_and_stable(tmp_path: Path) -> None:
    first = load_instance_id(tmp_path)
    assert first == load_instance_id(tmp_path)
    assert stat.S_IMODE((tmp_path / "instance_id").stat().st_mode) == 0o600
    (tmp_path / "instance_id").write_text("not an id!\n")
    with pytest.raises(CorruptFileError, match="delete it"):
        load_instance_id(tmp_path)


# --- registry ----------------------------------------------------------------------------------------------------


async def test_the_earliest_registered_live_member_leads(registry: MeshRegistry, store: Store) -> None:
    await registry.register(info("b"))
    await registry.register(info("a"))
    view = await registry.view()
    assert [m.instance_id for m in view.members] == ["self", "b", "a"]
    assert view.leader_id == "self"
    await registry.register(info("self", 3000))  # re-registering keeps the first registration time
    assert (await registry.view()).leader_id == "self"
    other = MeshRegistry(store, "a", leader_timeout=15)  # the same table seen from member "a"
    await age(store, "self", 60)
    view = await other.view()
    assert {m.instance_id: m.live for m in view.members} == {"self": False, "b": True, "a": True}
    assert view.leader_id == "b"  # the next earliest; stale members cannot lead


async def test_ties_are_broken_by_instance_id() -> None:
    now = utcnow()
    from specai.mesh.registry import Member

    def member(name: str) -> Member:
        return Member(name, "h", 1, "https://h:1", None, [], [], now, now, True)

    assert elect([member("zeta"), member("alpha"), member("mid")]) == "alpha"
    assert elect([]) is None


async def test_heartbeat_from_an_unknown_member_says_to_register(registry: MeshRegistry) -> None:
    with pytest.raises(UnknownInstanceError) as caught:
        await registry.heartbeat("ghost", ALICE)
    assert caught.value.status == 404
    assert "register" in caught.value.details["hint"]
    await registry.register(info("ghost"), ALICE)
    await registry.heartbeat("ghost", ALICE)


async def test_deregister_and_evict(registry: MeshRegistry, store: Store) -> None:
    await registry.register(info("a"), ALICE)
    await registry.register(info("b"), ALICE)
    await registry.deregister("a", ALICE)
    with pytest.raises(UnknownInstanceError):
        await registry.deregister("a", ALICE)
    await age(store, "b", 120)
    await age(store, "self", 120)
    assert await registry.evict(dt.timedelta(seconds=60)) == ["b"]  # never this server itself
    assert [m.instance_id for m in (await registry.view()).members] == ["self"]


async def test_registration_is_validated(registry: MeshRegistry) -> None:
    for bad in (
        MemberInfo("", "h", 1),
        MemberInfo("has space", "h", 1),
        MemberInfo("ok", "h", 0),
        MemberInfo("ok", "h", 1, base_url="http://h:1"),
    ):
        with pytest.raises(InvalidRequestError):
            await registry.register(bad)


async def test_learning_the_registrys_list_adopts_its_ranks(registry: MeshRegistry, store: Store) -> None:
    early = (utcnow() - dt.timedelta(hours=1)).isoformat()
    now = utcnow().isoformat()
    peers: list[dict[str, Any]] = [
        {
            "instance_id": "reg",
            "hostname": "h",
            "port": 1,
            "base_url": "https://h:1",
            "fingerprint": "F",
            "capabilities": ["registry"],
            "agent_profiles": [],
            "created_at": early,
            "last_heartbeat": now,
        },
        {
            "instance_id": "self",
            "hostname": "h",
            "port": 3000,
            "base_url": "https://h:3000",
            "fingerprint": "AA",
            "capabilities": ["query"],
            "agent_profiles": [],
            "created_at": now,
            "last_heartbeat": now,
        },
        {"instance_id": "broken"},
    ]
    await registry.learn(peers)
    view = await registry.view()
    assert [m.instance_id for m in view.members] == ["reg", "self"]
    assert view.leader_id == "reg"


# --- messages ----------------------------------------------------------------------------------------------------


async def test_a_broadcast_reaches_every_member_but_its_sender(
    registry: MeshRegistry, queue: MessageQueue
) -> None:
    for name in ("a", "b"):
        await registry.register(info(name))
    message, recipients = await queue.send("a", None, "notification", {"hello": 1})
    assert recipients == ["b", "self"]
    assert message.message_type == "Notification"
    assert (await queue.inbox("a")).messages == []
    assert [m.message_id for m in (await queue.inbox("b")).messages] == [message.message_id]
    assert (await queue.inbox("self")).messages[0].as_dict()["payload"] == {"hello": 1}


async def test_an_ack_removes_the_message_for_that_recipient_only(
    registry: MeshRegistry, queue: MessageQueue, store: Store
) -> None:
    for name in ("a", "b"):
        await registry.register(info(name))
    message, _ = await queue.send("self", None, "Query", {"q": "?"})
    assert await queue.ack("a", [message.message_id]) == 1
    assert (await queue.inbox("a")).messages == []
    assert len((await queue.inbox("b")).messages) == 1
    assert await queue.ack("a", [message.message_id]) == 0  # idempotent
    await queue.ack("b", [message.message_id, "unknown-id"])
    async with store.connect() as conn:
        assert (
            await conn.scalar(select(func.count()).select_from(mesh_messages)) == 0
        )  # everyone has it: gone


async def test_unknown_target_or_source_stores_nothing(
    registry: MeshRegistry, queue: MessageQueue, store: Store
) -> None:
    await registry.register(info("a"))
    with pytest.raises(UnknownInstanceError, match="nothing was queued"):
        await queue.send("a", "nobody", "Query", {})
    with pytest.raises(UnknownInstanceError, match="only members may send"):
        await queue.send("stranger", "a", "Query", {})
    with pytest.raises(PayloadTooLargeError) as too_big:
        await queue.send("a", "self", "Query", {"blob": "x" * 2000})
    assert too_big.value.status == 413
    with pytest.raises(UnprocessableError):
        await queue.send("a", "self", "Gossip", {})
    async with store.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(mesh_messages)) == 0
        assert await conn.scalar(select(func.count()).select_from(mesh_deliveries)) == 0


async def test_messages_survive_a_reopen_and_expire(
    db_settings: object, store: Store, queue: MessageQueue
) -> None:
    registry = MeshRegistry(store, "self", 15)
    await registry.register(info("self"))
    await registry.register(info("a"))
    sent = [(await queue.send("self", "a", "Query", {"n": i}))[0] for i in range(3)]
    reopened = await Store.open(db_settings)  # type: ignore[arg-type]
    try:
        assert [m.message_id for m in (await MessageQueue(reopened, 1024).inbox("a")).messages] == [
            m.message_id for m in sent
        ]
    finally:
        await reopened.close()
    async with store.transaction() as conn:
        await conn.execute(
            update(mesh_messages)
            .where(mesh_messages.c.message_id == sent[0].message_id)
            .values(created_at=utcnow() - dt.timedelta(days=30))
        )
    assert await queue.prune(dt.timedelta(days=7)) == 1
    assert [m.message_id for m in (await queue.inbox("a")).messages] == [m.message_id for m in sent[1:]]


async def test_concurrent_sends_and_acks_lose_nothing(registry: MeshRegistry, queue: MessageQueue) -> None:
    await registry.register(info("a"))
    sent = await asyncio.gather(*(queue.send("self", "a", "Notification", {"i": i}) for i in range(30)))
    inbox = (await queue.inbox("a")).messages
    assert sorted(m.message_id for m in inbox) == sorted(m.message_id for m, _ in sent)
    await asyncio.gather(*(queue.ack("a", [m.message_id]) for m in inbox))
    assert (await queue.inbox("a")).messages == []
    assert await queue.pending() == 0


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("TaskDelegation", "TaskDelegation"),
        ("task_delegation", "TaskDelegation"),
        ("graph_sync", "GraphSync"),
        ({"Custom": "ping"}, {"Custom": "ping"}),
        ({"custom": "ping"}, {"Custom": "ping"}),
    ],
)
def test_message_types_accept_both_cases_and_emit_pascal_case(given: object, expected: object) -> None:
    assert parse_message_type(given) == expected


@pytest.mark.parametrize("bad", ["taskdelegation", "", None, 3, {"Custom": ""}, {"Other": "x"}])
def test_unknown_message_types_are_refused(bad: object) -> None:
    with pytest.raises(UnprocessableError) as caught:
        parse_message_type(bad)
    assert "Notification" in caught.value.details["valid"]


async def test_a_broadcast_with_no_other_member_stores_nothing(
    registry: MeshRegistry, queue: MessageQueue
) -> None:
    _, recipients = await queue.send("self", None, "Notification", {})
    assert recipients == []
    assert await queue.pending() == 0
    async with queue.store.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(mesh_messages)) == 0


async def test_upgrading_a_version_2_database_keeps_its_graph(db_settings: object) -> None:
    from specai.store.migrations import SCHEMA_VERSION
    from specai.store.schema import graph_nodes

    old = await Store.open(db_settings, migrate=False)  # type: ignore[arg-type]
    try:
        assert await old.migrate(target=2) == 2
        now = utcnow()
        async with old.transaction() as conn:  # a node as a version-2 server wrote it
            await conn.execute(
                graph_nodes.insert().values(
                    uid="n-1",
                    session_id="kept",
                    node_type="entity",
                    label="before the mesh",
                    properties={},
                    version=1,
                    created_at=now,
                    updated_at=now,
                )
            )
        assert await old.migrate() == SCHEMA_VERSION
        async with old.connect() as conn:
            assert await conn.scalar(select(graph_nodes.c.label).where(graph_nodes.c.uid == "n-1")) == (
                "before the mesh"
            )
        registry = MeshRegistry(old, "self", 15)
        await registry.register(info("self"))
        assert [m.instance_id for m in (await registry.view()).members] == ["self"]
    finally:
        await old.close()


# --- owners and bounds -------------------------------------------------------------------------------------------


async def test_an_instance_id_belongs_to_the_account_that_registered_it(registry: MeshRegistry) -> None:
    await registry.register(info("a"), ALICE)
    for attempt in (
        registry.register(MemberInfo("a", "evil", 6666, fingerprint="BB"), BOB),
        registry.heartbeat("a", BOB),
        registry.deregister("a", BOB),
        registry.heartbeat("a", peer_principal("b")),  # a peer token acts only for its own instance
    ):
        with pytest.raises(ForbiddenError):
            await attempt
    assert (await registry.member("a")).hostname == "127.0.0.1"
    await registry.heartbeat("a", ADMIN)  # admins may act for any
    with pytest.raises(ForbiddenError):
        await registry.register(info("self"), BOB)  # the server's own entry belongs to the server


async def test_members_learned_from_the_registry_belong_to_their_own_peer_identity(
    registry: MeshRegistry,
) -> None:
    now = utcnow().isoformat()
    peer = {"hostname": "h", "port": 1, "base_url": "https://h:1", "created_at": now, "last_heartbeat": now}
    await registry.learn([{"instance_id": "m", **peer}])
    await registry.heartbeat("m", peer_principal("m"))
    with pytest.raises(ForbiddenError):
        await registry.heartbeat("m", ALICE)


async def test_members_per_account_and_messages_per_inbox_are_bounded(store: Store) -> None:
    registry = MeshRegistry(store, "self", 15, max_members_per_account=2)
    for name in ("a", "b"):
        await registry.register(info(name), ALICE)
    with pytest.raises(QuotaExceededError):
        await registry.register(info("c"), ALICE)
    await registry.register(info("c"), BOB)
    queue = MessageQueue(store, 1024, max_queued_messages=2)
    for n in range(2):
        await queue.send("a", "b", "Query", n, actor=ALICE)
    with pytest.raises(QuotaExceededError):
        await queue.send("a", "b", "Query", 2, actor=ALICE)
    with pytest.raises(ForbiddenError):
        await queue.send("a", "c", "Query", "as alice", actor=BOB)
    with pytest.raises(ForbiddenError):
        await queue.inbox("b", actor=BOB)
    waiting = (await queue.inbox("b", actor=ALICE)).messages
    with pytest.raises(ForbiddenError):
        await queue.ack("b", [m.message_id for m in waiting], actor=BOB)
    assert len((await queue.inbox("b")).messages) == 2  # bob's ack removed nothing
    with pytest.raises(InvalidRequestError):
        await queue.ack("b", ["x"] * (MAX_ACK + 1), actor=ALICE)
    for bad in ("1²", "-1", "\u0661"):  # the last is ARABIC-INDIC DIGIT ONE
        with pytest.raises(InvalidRequestError):
            parse_cursor(bad)
