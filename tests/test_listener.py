"""The PostgreSQL LISTEN connection and what rides on it: graph commits of one process wake another's change feed,
change counters wake another's caches; a lost connection comes back, and the slow poll covers what it missed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from databases import pg_admin, pg_execute

from specai.graph.feed import GRAPH_CHANNEL, ChangeNotifier
from specai.graph.model import Change
from specai.graph.store import GraphStore
from specai.store import Store
from specai.store.listener import MAX_PAYLOAD_BYTES, Listener, decode, encode
from specai.store.urls import POSTGRES_DRIVER
from specai.store.versions import VERSION_CHANNEL, VersionWatcher, bump
from specai.users.access import LOCAL


def _async_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername=POSTGRES_DRIVER).render_as_string(hide_password=False)


@pytest.fixture
def pg_store_url(pg_url: str) -> str:
    pg_execute(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return _async_url(pg_url)


class Process:
    """What one server process holds on the shared database: a store, a listener, a notifier, a graph."""

    def __init__(self, store: Store, listener: Listener) -> None:
        self.store = store
        self.listener = listener
        self.notifier = ChangeNotifier()
        self.notifier.relay(listener)
        self.graph = GraphStore(store, self.notifier)

    @classmethod
    async def open(cls, url: str) -> Process:
        store = await Store.open_url(url)
        return cls(store, Listener(store.engine.url, check_secs=0.5, retry_max_secs=0.2))

    async def close(self) -> None:
        await self.listener.close()
        await self.store.close()


async def _next(follow: Any, within: float) -> Change:
    return await asyncio.wait_for(follow.__anext__(), within)


def test_payloads_are_json_lists_and_malformed_ones_wake_everything() -> None:
    assert decode(encode(["a", "b\nc"])) == ["a", "b\nc"]
    assert decode("not json") == []
    assert decode('{"a": 1}') == []
    assert decode('[1, "x"]') == ["x"]


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_commit_on_one_process_wakes_the_other_before_its_poll(pg_store_url: str) -> None:
    async def scenario() -> None:
        a, b = await Process.open(pg_store_url), await Process.open(pg_store_url)
        await a.listener.start()
        await b.listener.start()
        try:
            assert a.listener.connected
            assert b.listener.connected
            # a poll far slower than the target: only the NOTIFY can make it in time
            follow = b.graph.follow("s1", 0, poll_secs=30)
            first = asyncio.ensure_future(_next(follow, 5))
            await asyncio.sleep(0.2)  # b's reader is waiting
            node = await a.graph.create_node("s1", "fact", "from a", {}, LOCAL)
            change = await first  # within 5 s, while the poll would take 30: the NOTIFY woke it
            assert change.entity_uid == node.uid
            assert change.operation == "create"
            # several commits in a burst: every one arrives, in order, exactly once
            made = [await a.graph.create_node("s1", "fact", f"n{i}", {}, LOCAL) for i in range(20)]
            seen = [await _next(follow, 5) for _ in made]
            assert [c.entity_uid for c in seen] == [n.uid for n in made]
            assert a.listener.sent >= 1
            await follow.aclose()
        finally:
            await a.close()
            await b.close()

    _run(scenario())


def test_own_notifications_are_not_handed_back(pg_store_url: str) -> None:
    async def scenario() -> None:
        store = await Store.open_url(pg_store_url)
        listener = Listener(store.engine.url)
        heard: list[str | None] = []
        listener.subscribe(GRAPH_CHANNEL, heard.append)
        await listener.start()
        try:
            assert heard == [None]  # the first connection: "look again" once
            listener.publish(GRAPH_CHANNEL, "mine")
            await asyncio.sleep(0.3)
            assert listener.sent == 1
            assert heard == [None]
        finally:
            await listener.close()
            await store.close()

    _run(scenario())


def test_publishes_coalesce_and_stay_under_the_payload_cap(pg_store_url: str) -> None:
    async def scenario() -> None:
        a, b = await Process.open(pg_store_url), await Process.open(pg_store_url)
        heard: list[str | None] = []
        b.listener.subscribe("specai_test", heard.append)
        await a.listener.start()
        await b.listener.start()
        try:
            heard.clear()
            items = [f"session-{i:04d}-" + "x" * 100 for i in range(300)]  # ~35 kB in all
            for item in items:
                a.listener.publish("specai_test", item)
            a.listener.publish("specai_test", items[0])  # a repeat while queued is sent once
            deadline = time.monotonic() + 5
            while len(heard) < len(items) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            assert heard == items
            assert 5 <= a.listener.sent < 20  # a handful of NOTIFYs, each under the cap
            assert MAX_PAYLOAD_BYTES < 8000
        finally:
            await a.close()
            await b.close()

    _run(scenario())


def test_a_dropped_listener_reconnects_and_says_look_again(pg_store_url: str, pg_url: str) -> None:
    async def scenario() -> None:
        a, b = await Process.open(pg_store_url), await Process.open(pg_store_url)
        heard: list[str | None] = []
        b.listener.subscribe(GRAPH_CHANNEL, heard.append)
        await a.listener.start()
        await b.listener.start()
        try:
            heard.clear()
            await pg_admin(
                pg_url,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'specai listener' AND pid <> pg_backend_pid()",
            )
            deadline = time.monotonic() + 5
            while not (a.listener.connected and b.listener.connected and None in heard):
                assert time.monotonic() < deadline, "the listener did not come back"
                await asyncio.sleep(0.05)
            heard.clear()
            await a.graph.create_node("s2", "fact", "after the drop", {}, LOCAL)
            while "s2" not in heard:
                assert time.monotonic() < deadline, "no wake-up after reconnecting"
                await asyncio.sleep(0.05)
        finally:
            await a.close()
            await b.close()

    _run(scenario())


def test_the_slow_poll_finds_a_commit_whose_notification_was_lost(pg_store_url: str) -> None:
    async def scenario() -> None:
        a = await Process.open(pg_store_url)
        b = await Process.open(pg_store_url)  # b never starts its listener: it hears nothing
        await a.listener.start()
        try:
            follow = b.graph.follow("s3", 0, poll_secs=0.3)
            first = asyncio.ensure_future(_next(follow, 5))
            await asyncio.sleep(0.1)
            node = await a.graph.create_node("s3", "fact", "unheard", {}, LOCAL)
            assert (await first).entity_uid == node.uid
            await follow.aclose()
        finally:
            await a.close()
            await b.close()

    _run(scenario())


def test_a_bumped_counter_reloads_the_other_process_at_once(pg_store_url: str) -> None:
    async def scenario() -> None:
        a, b = await Process.open(pg_store_url), await Process.open(pg_store_url)
        watcher = VersionWatcher(b.store, poll_secs=30)  # only the NOTIFY can make it in time
        b.listener.subscribe(VERSION_CHANNEL, watcher.wake)
        reloaded = asyncio.Event()

        async def reload() -> None:
            reloaded.set()

        watcher.on_change("users", reload)
        await watcher.prime()
        await b.listener.start()
        running = asyncio.create_task(watcher.run())
        try:
            await asyncio.sleep(0.1)
            reloaded.clear()
            async with a.store.transaction() as conn:
                await bump(conn, "users")
            await asyncio.wait_for(reloaded.wait(), 5)  # the poll would take 30 s
        finally:
            running.cancel()
            await a.close()
            await b.close()

    _run(scenario())


def test_a_counter_moved_while_nobody_listened_is_found_by_the_poll(pg_store_url: str) -> None:
    async def scenario() -> None:
        store = await Store.open_url(pg_store_url)
        watcher = VersionWatcher(store, poll_secs=0.1)
        calls: list[str] = []

        async def reload() -> None:
            calls.append("keys")

        watcher.on_change("keys", reload)
        await watcher.prime()
        running = asyncio.create_task(watcher.run())
        try:
            async with store.transaction() as conn:
                await bump(conn, "keys")
                await bump(conn, "other")
            deadline = time.monotonic() + 3
            while not calls:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            assert calls == ["keys"]  # once per move, not once per poll
        finally:
            running.cancel()
            await store.close()

    _run(scenario())
