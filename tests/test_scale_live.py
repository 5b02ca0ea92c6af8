"""Issue 13's acceptance: two real servers on one PostgreSQL database behave as one service.

Instance A is one process, instance B runs `--workers 2`; they have their own homes, ports and certificates
(each client pins each), and share the database and `[auth] token_secret`. Users are managed with the real CLI on
A's config. The graph stream poll is 30 s, so a watcher on B hearing a change made through A within 500 ms was
woken by A's NOTIFY, not by its poll. The last test kills A with SIGKILL while clients write through both.
"""

from __future__ import annotations

import signal
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from databases import pg_execute
from live import PASSWORD, ServerProcess, SseReader, make_home, run_cli, wait_until

pytestmark = pytest.mark.live
SECRET = "s" * 48
SESSION = "shared-graph"


@dataclass
class Service:
    """Two instances on one database, and where their homes are."""

    a: ServerProcess
    b: ServerProcess
    alice: str  # tokens taken before the throttle test locks this address out of unknown logins
    root: str

    def token(self, server: ServerProcess, user: str = "alice", password: str = PASSWORD) -> str:
        return server.login(user, password)


def _config(url: str) -> str:
    return (
        f'[auth]\nenabled = true\ntoken_secret = "{SECRET}"\nmax_failed_logins = 10\n'
        f'[database]\nurl = "{url}"\nleader_lease_secs = 2\n'
        "[graph]\nstream_poll_secs = 30\n"
    )


def _cli(home: Path, *args: str, password: str | None = None) -> str:
    result = run_cli(home, *args, input=None if password is None else password + "\n")
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[Service]:
    pg_execute(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    root = tmp_path_factory.mktemp("scale")
    homes = {name: make_home(root, name) for name in ("a", "b")}
    for home in homes.values():
        (home / "spec-ai.config.toml").write_text(_config(pg_url))
    _cli(homes["a"], "auth", "add-user", "root", "--password-stdin", password=PASSWORD)
    _cli(homes["a"], "auth", "add-user", "alice", "--password-stdin", password=PASSWORD)
    a = ServerProcess(homes["a"]).start()
    b = ServerProcess(homes["b"], "--workers", "2").start()
    try:
        yield Service(a, b, a.login("alice"), b.login("root"))
    finally:
        a.stop()
        b.stop()


def _get(server: ServerProcess, token: str, path: str) -> httpx.Response:
    with server.client(token) as client:
        return client.get(path)


def test_a_token_from_a_works_on_b(service: Service) -> None:
    token = service.token(service.a)
    for _ in range(6):  # B's two workers: every request may land on either
        response = _get(service.b, token, "/auth/whoami")
        assert response.status_code == 200, response.text
        assert response.json()["username"] == "alice"


def test_a_user_added_with_the_cli_logs_in_on_both_without_restarts(service: Service) -> None:
    _cli(service.a.home, "auth", "add-user", "carol", "--password-stdin", password="carol-pass-1")
    for server in (service.a, service.b, service.b):
        assert service.token(server, "carol", "carol-pass-1")
    listed = _cli(service.b.home, "auth", "list-users", "--json")
    assert '"carol"' in listed


def test_a_password_change_on_a_kills_the_old_token_on_b_within_a_second(service: Service) -> None:
    _cli(service.a.home, "auth", "add-user", "dave", "--password-stdin", password="dave-pass-1")
    old = service.token(service.a, "dave", "dave-pass-1")
    assert _get(service.b, old, "/auth/whoami").status_code == 200
    _cli(service.a.home, "auth", "passwd", "dave", "--password-stdin", password="dave-pass-2")
    changed = time.monotonic()

    def refused_everywhere() -> bool:
        return all(_get(service.b, old, "/auth/whoami").status_code == 401 for _ in range(4))

    wait_until(refused_everywhere, timeout=5, what="the old token to fail on B", every=0.02)
    assert time.monotonic() - changed < 1.5  # within 1 s, plus the requests that checked it
    assert service.token(service.b, "dave", "dave-pass-2")


def test_a_node_created_through_a_is_readable_through_b_and_b_watchers_see_it_within_500_ms(
    service: Service,
) -> None:
    token = service.token(service.a)
    with service.a.client(token) as on_a, service.b.client(token) as on_b:
        watchers = [SseReader(on_b, "GET", f"/graph/stream?session_id={SESSION}").start() for _ in range(2)]
        for watcher in watchers:
            watcher.wait_for(1)  # the opening event: the watcher is following
        delays: list[float] = []
        for index in range(5):
            created = time.monotonic()
            response = on_a.post(
                "/graph/nodes",
                json={"session_id": SESSION, "node_type": "fact", "label": f"from A {index}"},
            )
            assert response.status_code == 201, response.text
            node = response.json()
            read = on_b.get(f"/graph/nodes/{node['id']}")
            assert read.status_code == 200, read.text  # readable through B at once
            assert read.json()["label"] == f"from A {index}"
            for watcher in watchers:
                watcher.wait_for(index + 2, timeout=10)
                event = watcher.events[index + 1]
                assert event.data["entity_id"] == node["id"]
                delays.append(event.at - created)
    # the stream's poll is 30 s: anything under 10 s was a NOTIFY; the target is 500 ms
    assert statistics.median(delays) < 0.5, delays


def test_wrong_passwords_spread_over_a_and_b_trip_the_shared_throttle(service: Service) -> None:
    _cli(service.a.home, "auth", "add-user", "erin", "--password-stdin", password="erin-pass-1")
    codes = []
    for attempt in range(10):  # max_failed_logins = 10: five on each would pass per-process counters
        server = service.a if attempt % 2 else service.b
        with server.client() as client:
            codes.append(
                client.post("/auth/token", json={"username": "erin", "password": "wrong"}).status_code
            )
    assert codes == [401] * 10
    for server in (service.a, service.b):
        with server.client() as client:
            response = client.post("/auth/token", json={"username": "erin", "password": "erin-pass-1"})
        assert response.status_code == 429, response.text
        assert response.json()["code"] == "too_many_attempts"


def test_exactly_one_process_leads(service: Service) -> None:
    def leaders() -> int:
        token = service.root
        flags = [_get(service.a, token, "/health").json()["leader"]]
        flags += [_get(service.b, token, "/health").json()["leader"] for _ in range(6)]
        return sum(1 for flag in flags if flag)

    # A answers once; B's answers come from either worker, so B's count says only whether one of them leads
    wait_until(lambda: leaders() >= 1, timeout=10, what="a leader")


class Writer(threading.Thread):
    """Creates nodes through one server until stopped; keeps the ids the server acknowledged."""

    def __init__(self, server: ServerProcess, token: str, name: str) -> None:
        super().__init__(daemon=True)
        self.server, self.token, self.name_ = server, token, name
        self.acknowledged: list[int] = []
        self.failures = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with self.server.client(self.token) as client:
            index = 0
            while not self.stop.is_set():
                index += 1
                try:
                    response = client.post(
                        "/graph/nodes",
                        json={"session_id": SESSION, "node_type": "fact", "label": f"{self.name_}-{index}"},
                    )
                except httpx.HTTPError:
                    self.failures += 1
                    time.sleep(0.05)
                    continue
                if response.status_code == 201:
                    self.acknowledged.append(int(response.json()["id"]))
                else:
                    self.failures += 1


def _stream_ids(events: list[Any]) -> list[int]:
    return [int(e.id) for e in events if e.event == "message" and e.id is not None]


class Follower(threading.Thread):
    """A watcher as a real client is one: it follows a session on one server and, whenever its stream breaks,
    reconnects with `Last-Event-ID` (after `move_to` is set, to that server)."""

    def __init__(self, server: ServerProcess, token: str, after: int) -> None:
        super().__init__(daemon=True)
        self.server, self.token = server, token
        self.ids: list[int] = []
        self.after = after
        self.breaks: list[str] = []
        self.move_to: ServerProcess | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            server = self.move_to or self.server
            last = self.ids[-1] if self.ids else self.after
            try:
                with server.client(self.token) as client:
                    reader = SseReader(
                        client,
                        "GET",
                        f"/graph/stream?session_id={SESSION}",
                        headers={"Last-Event-ID": str(last)},
                    )
                    reader.start()
                    seen = 0
                    while not self.stop.is_set() and not (
                        reader.ended.is_set() and seen == len(reader.events)
                    ):
                        for event in reader.events[seen:]:
                            if event.event == "message" and event.id is not None:
                                self.ids.append(int(event.id))
                        seen = len(reader.events)
                        time.sleep(0.01)
                    self.breaks.append(repr(reader.error))
            except (httpx.HTTPError, AssertionError) as exc:
                self.breaks.append(repr(exc))
                time.sleep(0.1)


def test_kill_9_of_a_loses_no_acknowledged_write_and_a_moving_watcher_sees_each_change_once(
    service: Service,
) -> None:
    token = service.alice
    with service.b.client(token) as on_b:
        latest = SseReader(on_b, "GET", f"/graph/stream?session_id={SESSION}").start()
        latest.wait_for(1)
        after = int(latest.events[0].data["after"])
    watcher = Follower(service.a, token, after)
    watcher.start()
    writers = [Writer(service.a, token, "via-a"), Writer(service.b, token, "via-b")]
    for writer in writers:
        writer.start()
    wait_until(
        lambda: len(watcher.ids) >= 30 and all(len(writer.acknowledged) > 10 for writer in writers),
        timeout=30,
        what="changes on A's stream, and more than 10 acknowledged writes through each server",
    )
    watcher.move_to = service.b  # its next reconnection goes to B, with the last id it saw on A
    service.a.stop(signal.SIGKILL)
    time.sleep(0.5)
    for writer in writers:
        writer.stop.set()
        writer.join(10)
    acknowledged = sorted(writers[0].acknowledged + writers[1].acknowledged)
    assert len(writers[0].acknowledged) > 10
    assert len(writers[1].acknowledged) > 10
    with service.b.client(token) as on_b:
        for node_id in acknowledged:
            response = on_b.get(f"/graph/nodes/{node_id}")
            assert response.status_code == 200, (node_id, response.text)  # every acknowledged write is there
        everything = SseReader(on_b, "GET", f"/graph/stream?session_id={SESSION}&since={after}").start()
        everything.wait_for(lambda events: len(_stream_ids(events)) >= len(acknowledged), timeout=20)
        time.sleep(1.0)  # the writers stopped long ago: let the catch-up finish
        all_ids = _stream_ids(everything.events)
    assert len(all_ids) >= len(acknowledged)
    wait_until(lambda: len(watcher.ids) >= len(all_ids), timeout=20, what="the moved watcher to catch up")
    watcher.stop.set()
    watcher.join(10)
    assert watcher.breaks, "the watcher never had to reconnect"
    assert watcher.ids == sorted(set(watcher.ids)), "a change seen twice or out of order"
    assert watcher.ids == all_ids, "a change missed across the move from A to B"
