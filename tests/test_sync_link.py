"""The sync coordinator in-process: peer selection from a real mesh registry, pulls page by page and pushes on
commit between real engines on real SQLite stores, backoff and state bookkeeping, and the HTTP side's
classification against real TLS listeners (a wrong pin, a refusal, a closed port).

Between in-process sites, each peer's `/sync/request` and `/sync/apply` are answered by `RoutesStandIn`, which
calls the peer's real SyncEngine through the wire form as the routes do; the HTTP hop itself is what
test_sync_live.py runs, between real servers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from live import RecordingTlsServer, free_port, write_cert_pair
from sqlalchemy import select, update

from specai.client.peer import Credentials, Peer
from specai.config import Settings, SyncSettings
from specai.errors import (
    AuthError,
    ConnectionFailedError,
    SpecaiError,
    TrustError,
)
from specai.graph.store import GraphStore
from specai.graph.sync.engine import OwnerMismatchError, SyncEngine, SyncNotEnabledError
from specai.graph.sync.hlc import ClockSkewError, HybridClock
from specai.graph.sync.payload import SyncPayload, parse_vector, vector_wire
from specai.graph.sync.recorder import SyncRecorder
from specai.identity.trust import parse_server
from specai.mesh.peer_token import PeerTokenVerifier, issue, load_signing_key
from specai.mesh.registry import MemberInfo, MeshRegistry
from specai.server.mesh_link import MeshLink
from specai.server.sync_link import (
    HttpRemote,
    PeerSyncError,
    SyncLink,
    backoff,
    candidates,
    local_refusal,
    refusal,
    transport_failure,
)
from specai.store import Store
from specai.store.schema import graph_edges, graph_nodes, graph_sync_entities, mesh_members
from specai.store.types import utcnow

pytestmark = pytest.mark.anyio
SESSION = "shared"
FINGERPRINT = ":".join(["AB"] * 32)


# --- in-process sites -------------------------------------------------------------------------------------------


class Clock:
    """The coordinator's clock, moved by the test (backoff is judged by it)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Site:
    """One member: a real store, graph, sync engine and mesh registry, and its coordinator."""

    name: str
    store: Store
    graph: GraphStore
    engine: SyncEngine
    registry: MeshRegistry
    calls: list[str] = field(default_factory=list)  # the /sync paths other sites called here
    link: SyncLink | None = None

    async def dump(self) -> dict[str, Any]:
        async with self.store.connect() as conn:
            nodes = (await conn.execute(select(graph_nodes).where(graph_nodes.c.session_id == SESSION))).all()
            edges = (await conn.execute(select(graph_edges).where(graph_edges.c.session_id == SESSION))).all()
        uid_of = {n.id: n.uid for n in nodes}
        return {
            "nodes": {n.uid: (n.label, n.properties) for n in nodes},
            "edges": {e.uid: (uid_of[e.source_id], uid_of[e.target_id], e.edge_type) for e in edges},
        }


class RoutesStandIn:
    """A peer's `/sync/request` and `/sync/apply`, answered by its real engine through the wire form, with the
    routes' error mapping (status and code of the SpecaiError)."""

    def __init__(self, site: Site, caller: str) -> None:
        self.site = site
        self.caller = caller

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.site.calls.append(path)
        try:
            if path == "/sync/request":
                vector = parse_vector(body.get("vector_clock"))
                payload = await self.site.engine.request(
                    body["session_id"], body.get("graph_name"), vector, body["limit"], requester=self.caller
                )
                return {"success": True, "message": "ok", "payload": payload.wire()}
            assert path == "/sync/apply", path
            stats = await self.site.engine.apply(SyncPayload.from_wire(body, "default"), sender=self.caller)
            return {
                "success": True,
                "message": "Sync applied successfully",
                "stats": stats.as_dict(),
                "vector_clock": vector_wire(stats.vector),
            }
        except SpecaiError as exc:
            raise refusal(exc.status, exc.code, exc.message) from None

    async def aclose(self) -> None:
        return None


async def open_site(tmp_path: Path, name: str, offset_ms: int = 0) -> Site:
    store = await Store.open_url(f"sqlite+aiosqlite:///{tmp_path / (name + '.db')}")
    clock = HybridClock(name, 60_000, lambda: time.time_ns() // 1_000_000 + offset_ms)
    graph = GraphStore(store, recorder=SyncRecorder(clock))
    registry = MeshRegistry(store, name, leader_timeout=60)
    await registry.register(MemberInfo(name, "127.0.0.1", 4000, fingerprint=FINGERPRINT))
    return Site(name, store, graph, SyncEngine(graph, clock), registry)


async def mesh_of(sites: dict[str, Site]) -> None:
    """Every site knows every other as a live, pinned member (as learned from a registry)."""
    now = utcnow().isoformat()
    for site in sites.values():
        others = [
            {
                "instance_id": other,
                "hostname": "127.0.0.1",
                "port": 4000 + i,
                "base_url": f"https://127.0.0.1:{4000 + i}",
                "fingerprint": FINGERPRINT,
                "created_at": now,
                "last_heartbeat": now,
            }
            for i, other in enumerate(sorted(sites))
            if other != site.name
        ]
        await site.registry.learn(others)


def link_for(
    site: Site, sites: dict[str, Site], clock: Callable[[], float] = time.time, **options: Any
) -> SyncLink:
    settings = SyncSettings(enabled=True, namespaces=[{"session_id": SESSION}], **options)
    site.link = SyncLink(
        settings,
        site.engine,
        site.registry,
        site.graph.notifier,
        lambda member: RoutesStandIn(sites[member.instance_id], site.name),
        clock=clock,
    )
    return site.link


@pytest.fixture
async def sites(tmp_path: Path) -> AsyncIterator[dict[str, Site]]:
    opened = {name: await open_site(tmp_path, name) for name in ("a", "b", "c")}
    await mesh_of(opened)
    for site in opened.values():
        await site.engine.set_enabled(SESSION, None, True)
    try:
        yield opened
    finally:
        for site in opened.values():
            if site.link is not None:
                await site.link.close()
            await site.store.close()


async def eventually(check: Callable[[], Any], within: float = 5.0) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


async def nodes(site: Site, count: int, label: str) -> list[str]:
    created = [await site.graph.create_node(SESSION, "entity", f"{label}{i}", {"i": i}) for i in range(count)]
    return [node.uid for node in created]


def state_of(link: SyncLink, peer: str) -> dict[str, Any]:
    return next(p for p in link.peer_states(SESSION) if p["instance_id"] == peer)


# --- peer selection ---------------------------------------------------------------------------------------------


async def test_only_live_pinned_members_other_than_itself_are_synced_with(tmp_path: Path) -> None:
    site = await open_site(tmp_path, "self")
    try:
        now = utcnow()
        entry = {
            "hostname": "127.0.0.1",
            "port": 4001,
            "created_at": now.isoformat(),
            "last_heartbeat": now.isoformat(),
        }
        await site.registry.learn(
            [
                {
                    **entry,
                    "instance_id": "pinned",
                    "base_url": "https://127.0.0.1:4001",
                    "fingerprint": FINGERPRINT,
                },
                {**entry, "instance_id": "no-pin", "base_url": "https://127.0.0.1:4002", "fingerprint": None},
                {
                    **entry,
                    "instance_id": "stale",
                    "base_url": "https://127.0.0.1:4003",
                    "fingerprint": FINGERPRINT,
                },
            ]
        )
        async with site.store.transaction() as conn:  # silent for longer than the leader timeout
            await conn.execute(
                update(mesh_members)
                .where(mesh_members.c.instance_id == "stale")
                .values(last_heartbeat=now - dt.timedelta(seconds=120))
            )
        view = await site.registry.view()
        assert [m.instance_id for m in candidates(view.members, "self")] == ["pinned"]

        called: list[str] = []

        def connect(member: Any) -> None:
            called.append(member.instance_id)
            return None  # not joined yet: nothing can be called

        await site.engine.set_enabled(SESSION, None, True)
        settings = SyncSettings(enabled=True, interval_secs=60)
        link = SyncLink(settings, site.engine, site.registry, site.graph.notifier, connect)
        await link.cycle()
        await link.settle()
        assert called == ["pinned"]
        states = {p["instance_id"]: p for p in link.peer_states(SESSION)}
        assert set(states) == {"pinned", "no-pin", "stale"}  # never itself
        assert states["pinned"]["state"] == "pending"
        assert "not joined" in states["pinned"]["last_error"]
        assert states["no-pin"]["state"] == "untrusted"
        assert "fingerprint" in states["no-pin"]["last_error"]
        assert states["stale"]["state"] == "unreachable"
        assert "no heartbeat" in states["stale"]["last_error"]
        await link.close()
    finally:
        await site.store.close()


async def test_a_registry_calls_each_member_with_a_peer_token_it_signs_for_that_member(
    tmp_path: Path,
) -> None:
    pair = write_cert_pair(tmp_path)
    key = load_signing_key(pair.key, pair.cert.read_text())
    site = await open_site(tmp_path, "registry")
    try:
        settings = Settings(home=tmp_path / "home")
        me = MemberInfo("registry", "127.0.0.1", 4000, fingerprint=FINGERPRINT)
        link = MeshLink(
            settings,
            site.registry,
            me,
            None,
            None,
            Credentials(),
            issue_token=lambda source, audience: issue(key, "registry", source, audience),
        )
        now = utcnow().isoformat()
        member = {"hostname": "127.0.0.1", "port": 4001, "created_at": now, "last_heartbeat": now}
        await site.registry.learn(
            [
                {
                    **member,
                    "instance_id": "m1",
                    "base_url": "https://127.0.0.1:4001",
                    "fingerprint": FINGERPRINT,
                },
                {**member, "instance_id": "m2", "base_url": "https://127.0.0.1:4002", "fingerprint": None},
            ]
        )
        members = {m.instance_id: m for m in (await site.registry.view()).members}
        assert link.peer_for(members["registry"]) is None  # never itself
        assert link.peer_for(members["m2"]) is None  # nothing to pin
        peer = link.peer_for(members["m1"])
        assert peer is not None
        assert peer.fingerprint == FINGERPRINT
        assert peer.address.origin == "https://127.0.0.1:4001"
        assert peer.tokens is not None
        token = await peer.tokens(False)
        assert await peer.tokens(False) == token  # cached until it nears expiry
        assert await peer.tokens(True) != token  # a refused one is replaced
        der = pair.certificate.public_bytes(serialization.Encoding.DER)
        claims = PeerTokenVerifier(der, "registry", "m1").verify(token)
        assert (claims.sub, claims.aud) == ("registry", "m1")
        with pytest.raises(SpecaiError):
            PeerTokenVerifier(der, "registry", "m2").verify(token)  # for that member only
    finally:
        await site.store.close()


async def test_a_member_calls_nobody_before_it_joined_its_registry(tmp_path: Path) -> None:
    site = await open_site(tmp_path, "member")
    try:
        me = MemberInfo("member", "127.0.0.1", 4000, fingerprint=FINGERPRINT)
        link = MeshLink(
            Settings(home=tmp_path / "home"), site.registry, me, "https://127.0.0.1:4999", None, Credentials()
        )
        now = utcnow().isoformat()
        await site.registry.learn(
            [
                {
                    "instance_id": "other",
                    "hostname": "127.0.0.1",
                    "port": 4001,
                    "base_url": "https://127.0.0.1:4001",
                    "fingerprint": FINGERPRINT,
                    "created_at": now,
                    "last_heartbeat": now,
                }
            ]
        )
        other = next(m for m in (await site.registry.view()).members if m.instance_id == "other")
        assert link.peer_for(other) is None
    finally:
        await site.store.close()


# --- pulls and pushes between real engines ----------------------------------------------------------------------


async def test_a_cycle_pulls_every_page_from_every_live_member(sites: dict[str, Site]) -> None:
    a, b, c = sites["a"], sites["b"], sites["c"]
    from_b = await nodes(b, 7, "b")
    first, second = await nodes(c, 2, "c")
    c_nodes = (await c.graph.list_nodes(SESSION, None, 10, None)).items
    await c.graph.create_edge(SESSION, c_nodes[0].id, c_nodes[1].id, "RELATES_TO", None, None, 1.0)
    link = link_for(a, sites, interval_secs=60, page_size=3)
    await link.cycle()
    await link.settle()
    dump = await a.dump()
    assert set(dump["nodes"]) == {*from_b, first, second}
    assert len(dump["edges"]) == 1
    assert b.calls.count("/sync/request") == 3  # 7 changes in pages of 3
    assert c.calls.count("/sync/request") == 1  # 3 changes, one page
    for peer in ("b", "c"):
        state = state_of(link, peer)
        assert state["state"] == "ok", state
        assert state["last_error"] is None
        assert state["last_ok_at"] is not None
    # what b and c lack of each other's changes was pushed to them after the pulls (relayed, origin kept)
    assert await eventually(lambda: _same(a, b, c))


async def _same(*sites: Site) -> bool:
    dumps = [await site.dump() for site in sites]
    return all(d == dumps[0] for d in dumps)


async def test_a_local_commit_is_pushed_within_a_second_and_nothing_bounces(sites: dict[str, Site]) -> None:
    a, b = sites["a"], sites["b"]
    await forget(a, "c")
    await forget(b, "c")
    stopping = asyncio.Event()
    runs = [asyncio.create_task(link_for(s, sites, interval_secs=60).run(stopping)) for s in (a, b)]
    try:
        assert await eventually(lambda: _called(b, "/sync/request"))  # the first cycles ran
        assert await eventually(lambda: _called(a, "/sync/request"))
        for site in (a, b):
            assert site.link is not None
            await site.link.settle()
        started = time.monotonic()
        (uid,) = await nodes(a, 1, "pushed")

        async def arrived() -> bool:
            return uid in (await b.dump())["nodes"]

        assert await eventually(arrived, within=3)
        assert time.monotonic() - started < 1.5
        assert b.calls.count("/sync/request") == 1  # it came by push: no cycle ran since
        await asyncio.sleep(1.0)  # b's apply woke b's push watcher too: nothing goes back or forth
        calls = (list(a.calls), list(b.calls))
        await asyncio.sleep(1.0)
        assert (list(a.calls), list(b.calls)) == calls
        assert b.calls.count("/sync/apply") == 1
        assert a.calls.count("/sync/apply") == 0
    finally:
        stopping.set()
        await asyncio.gather(*runs)


async def forget(site: Site, member: str) -> None:
    """Take `member` out of `site`'s mesh."""
    async with site.store.transaction() as conn:
        await conn.execute(mesh_members.delete().where(mesh_members.c.instance_id == member))


async def _called(site: Site, path: str) -> bool:
    return path in site.calls


async def test_run_now_pulls_and_pushes_at_once_whatever_the_backoff(sites: dict[str, Site]) -> None:
    a, b = sites["a"], sites["b"]
    await forget(a, "c")
    clock = Clock()
    link = link_for(a, sites, clock, interval_secs=60)
    await b.engine.set_enabled(SESSION, None, False)
    await link.cycle()
    await link.settle()
    assert state_of(link, "b")["state"] == "not_enabled"
    await b.engine.set_enabled(SESSION, None, True)
    from_b = await nodes(b, 2, "b")
    from_a = await nodes(a, 3, "a")
    results = await link.run_now(SESSION)  # within the backoff
    # b's own two changes are not sent back to it: applying its page told this server what it holds
    assert results == [{"instance_id": "b", "state": "ok", "pulled": 2, "pushed": 3, "error": None}]
    assert set((await b.dump())["nodes"]) == {*from_a, *from_b}
    await a.engine.set_enabled(SESSION, None, False)
    with pytest.raises(SyncNotEnabledError):
        await link.run_now(SESSION)


async def test_a_tombstone_that_arrived_before_its_create_is_kept_until_the_create_arrives(
    sites: dict[str, Site],
) -> None:
    a, b, c = sites["a"], sites["b"], sites["c"]
    (uid,) = await nodes(b, 1, "doomed")
    await a.engine.apply(await b.engine.request(SESSION, None, {}, 100, requester="a"), sender="b")
    (shown,) = (await a.graph.list_nodes(SESSION, None, 10, None)).items
    await a.graph.delete_node(shown.id)
    first = await a.engine.request(SESSION, None, {}, 1, requester="c")  # origin a first: the delete alone
    assert [(ch.operation, ch.uid) for ch in first.changes] == [("delete", uid)]
    await c.engine.apply(SyncPayload.from_wire(first.wire(), "default"), sender="a")
    await b.engine.apply(await a.engine.request(SESSION, None, {}, 100, requester="b"), sender="a")
    for peer in (a, b):  # both report holding everything: the delete and the create
        await c.engine.request(
            SESSION, None, (await peer.engine.status(SESSION)).vector, 100, requester=peer.name
        )
    await forget(c, "a")
    await forget(c, "b")
    link = link_for(c, sites, interval_secs=60)
    await link.cycle()  # c lacks the create its peers hold: the tombstone stays
    rest = await a.engine.request(SESSION, None, (await c.engine.status(SESSION)).vector, 100, requester="c")
    assert [(ch.operation, ch.uid) for ch in rest.changes] == [("create", uid)]
    await c.engine.apply(SyncPayload.from_wire(rest.wire(), "default"), sender="a")
    assert (await c.dump())["nodes"] == {}  # the late create does not bring it back
    await link.cycle()  # caught up now: collected
    async with c.store.connect() as conn:
        assert (
            await conn.execute(select(graph_sync_entities).where(graph_sync_entities.c.uid == uid))
        ).all() == []
    assert (await c.dump())["nodes"] == {}


# --- backoff and state bookkeeping ------------------------------------------------------------------------------


def test_backoff_starts_at_the_interval_doubles_and_stops_at_retry_interval() -> None:
    assert [backoff(n, 1.0, 10.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff(3, 5.0, 2.0) == 5.0  # a cap below the interval: the interval
    assert backoff(10_000, 0.5, 300.0) == 300.0  # no overflow however long it fails


async def test_a_failing_peer_is_backed_off_and_each_state_change_logged_once(
    sites: dict[str, Site], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = sites["a"], sites["b"]
    clock = Clock()
    link = link_for(a, sites, clock, interval_secs=1, retry_interval_secs=4)
    await b.engine.set_enabled(SESSION, None, False)
    caplog.set_level(logging.WARNING, logger="specai.sync")

    async def cycle() -> None:
        await link.cycle()
        await link.settle()

    await cycle()
    state = state_of(link, "b")
    assert state["state"] == "not_enabled"
    assert "not enabled" in state["last_error"]
    assert state["next_try_at"] == dt.datetime.fromtimestamp(clock.now + 1, dt.UTC).isoformat()
    asked = b.calls.count("/sync/request")
    await cycle()  # within the backoff: not asked again
    assert b.calls.count("/sync/request") == asked
    delays = []
    for _ in range(4):
        clock.now += 10
        await cycle()
        assert b.calls.count("/sync/request") == asked + 1
        asked += 1
        next_try = dt.datetime.fromisoformat(state_of(link, "b")["next_try_at"]).timestamp()
        delays.append(round(next_try - clock.now, 3))
    assert delays == [2.0, 4.0, 4.0, 4.0]
    warned = [r.getMessage() for r in caplog.records if "127.0.0.1:4001" in r.getMessage()]
    assert len(warned) == 1, warned  # five failures, one state: one warning
    assert "not_enabled" in warned[0]
    assert state_of(link, "c")["state"] == "ok"  # the others are not held up

    await b.engine.set_enabled(SESSION, None, True)
    clock.now += 10
    await cycle()
    state = state_of(link, "b")
    assert state["state"] == "ok"
    assert state["last_ok_at"] == dt.datetime.fromtimestamp(clock.now, dt.UTC).isoformat()
    warned = [r.getMessage() for r in caplog.records if "127.0.0.1:4001" in r.getMessage()]
    assert len(warned) == 2
    assert "works again" in warned[1]
    await cycle()  # back to every cycle
    assert b.calls.count("/sync/request") == asked + 2


async def test_a_peer_whose_clock_runs_ahead_is_reported_as_skew(tmp_path: Path) -> None:
    sites = {"a": await open_site(tmp_path, "a"), "b": await open_site(tmp_path, "b", offset_ms=120_000)}
    try:
        await mesh_of(sites)
        for site in sites.values():
            await site.engine.set_enabled(SESSION, None, True)
        await nodes(sites["b"], 1, "future")
        link = link_for(sites["a"], sites, interval_secs=60)
        await link.cycle()
        await link.settle()
        state = state_of(link, "b")
        assert state["state"] == "skew"
        assert "max_clock_skew_secs" in state["last_error"]
        assert (await sites["a"].dump())["nodes"] == {}
        await link.close()
    finally:
        for site in sites.values():
            await site.store.close()


def test_error_answers_and_local_refusals_map_to_peer_states() -> None:
    cases = {
        (401, "unauthorized"): "refused",
        (403, "forbidden"): "refused",
        (404, "sync_not_enabled"): "not_enabled",
        (404, "not_found"): "not_enabled",  # no /sync routes there
        (422, "clock_skew"): "skew",
        (422, "unknown_graph"): "refused",
        (409, "owner_mismatch"): "refused",
        (413, "payload_too_large"): "refused",
        (500, "error"): "unreachable",
        (503, "database_unavailable"): "unreachable",
    }
    for (status, code), expected in cases.items():
        failure = refusal(status, code, "why")
        assert (failure.state, failure.http_status) == (expected, status), (status, code)
        assert "why" in failure.message
    assert transport_failure(TrustError("not the pinned certificate")).state == "untrusted"
    assert transport_failure(AuthError("refused the mesh login")).state == "refused"
    assert transport_failure(ConnectionFailedError("connection refused")).state == "unreachable"
    assert local_refusal(ClockSkewError("ahead")).state == "skew"
    assert local_refusal(SyncNotEnabledError("off here")).state == "not_enabled"
    mismatch = local_refusal(OwnerMismatchError("owned by another user"))
    assert (mismatch.state, mismatch.message) == (
        "refused",
        "its payload was refused here: owned by another user",
    )


# --- the HTTP side against real TLS listeners -------------------------------------------------------------------


async def test_a_wrong_pinned_fingerprint_is_untrusted_and_nothing_is_sent(tmp_path: Path) -> None:
    server = RecordingTlsServer(tmp_path)
    try:
        tokens_asked: list[bool] = []

        async def tokens(refresh: bool) -> str:
            tokens_asked.append(refresh)
            return "secret-token"

        remote = HttpRemote(Peer(parse_server(server.url), FINGERPRINT, tokens=tokens))
        with pytest.raises(PeerSyncError) as caught:
            await remote.post("/sync/request", {"session_id": SESSION})
        assert caught.value.state == "untrusted"
        assert server.fingerprint in caught.value.message  # what it presents, and the pin it is not
        assert FINGERPRINT in caught.value.message
        assert server.raw == b""  # no byte after the handshake: no token, no body
        assert tokens_asked == []
        await remote.aclose()
    finally:
        server.close()


async def test_a_peer_refusing_the_token_is_refused_with_its_error_text(tmp_path: Path) -> None:
    server = RecordingTlsServer(tmp_path)
    try:
        remote = HttpRemote(
            Peer(parse_server(server.url), server.fingerprint, credentials=Credentials(token="t"))
        )
        with pytest.raises(PeerSyncError) as caught:
            await remote.post("/sync/request", {"session_id": SESSION})
        assert (caught.value.state, caught.value.message, caught.value.http_status) == (
            "refused",
            "who are you?",
            401,
        )
        (request,) = server.requests
        assert request.request_line == "POST /sync/request HTTP/1.1"
        assert request.headers["authorization"] == "Bearer t"
        await remote.aclose()
    finally:
        server.close()


async def test_a_closed_port_is_unreachable() -> None:
    remote = HttpRemote(Peer(parse_server(f"https://127.0.0.1:{free_port()}"), FINGERPRINT))
    with pytest.raises(PeerSyncError) as caught:
        await remote.post("/sync/request", {"session_id": SESSION})
    assert caught.value.state == "unreachable"
    await remote.aclose()
