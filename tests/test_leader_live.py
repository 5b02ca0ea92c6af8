"""Leadership across real `specai server` processes sharing one PostgreSQL database (auth off, loopback, their own
homes and ports, `leader_lease_secs = 3`): exactly one leads (`/health` says which), pruning runs only there,
`kill -9` of the leader moves the singleton jobs to the other within the lease time, SIGTERM hands them over at
once."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import asyncpg
import pytest
from databases import pg_execute
from live import ServerProcess, make_home, wait_until

pytestmark = pytest.mark.live
LEASE_SECS = 3
MARGIN_SECS = 1.5  # a claim every lease/3, a health poll, and a loaded 2-core machine
SESSION = "leader-notes"
LEADS = re.compile(r"this process leads \(lease 'singleton-jobs', epoch (\d+)\)")
PRUNED = re.compile(r"pruned (\d+) graph changelog rows")


def _config(url: str) -> str:
    return f'[database]\nurl = "{url}"\nleader_lease_secs = {LEASE_SECS}\n[graph]\nchangelog_retention_days = 30\n'


def _scalar(url: str, sql: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def _leads(server: ServerProcess) -> bool:
    with server.client() as client:
        body = client.get("/health").json()
    assert body["status"] == "healthy"
    return bool(body["leader"])


def _epochs(server: ServerProcess) -> list[int]:
    return [int(match.group(1)) for match in LEADS.finditer(server.text())]


def _pruned(server: ServerProcess) -> list[int]:
    return [int(match.group(1)) for match in PRUNED.finditer(server.text())]


@pytest.fixture
def homes(tmp_path: Path, pg_url: str) -> tuple[Path, Path]:
    pg_execute(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    pair = make_home(tmp_path, "a"), make_home(tmp_path, "b")
    for home in pair:
        (home / "spec-ai.config.toml").write_text(_config(pg_url))
    return pair


def test_one_leader_prunes_kill_9_fails_over_within_the_lease_and_sigterm_hands_over_at_once(
    homes: tuple[Path, Path], pg_url: str
) -> None:
    a, b = ServerProcess(homes[0]), ServerProcess(homes[1])
    try:
        a.start()
        assert _leads(a)  # alone: it claimed the lease before it answered
        with a.client() as client:
            for index in range(3):
                body = {"session_id": SESSION, "node_type": "concept", "label": f"n{index}"}
                assert client.post("/graph/nodes", json=body).status_code == 201
        # older than the 30-day retention now; A pruned at the start of its tenure, and next prunes in an hour
        _scalar(pg_url, "UPDATE graph_changelog SET created_at = now() - interval '40 days'")
        old = "SELECT count(*) FROM graph_changelog WHERE created_at < now() - interval '30 days'"
        assert _scalar(pg_url, old) == 3

        b.start()  # not the leader: it must not prune at its start
        wait_until(lambda: not _leads(b), what="B to answer as a follower")
        for _ in range(10):  # over a lease's time: A keeps leading, B keeps following
            assert (_leads(a), _leads(b)) == (True, False)
            time.sleep(LEASE_SECS / 10)
        assert _scalar(pg_url, old) == 3
        assert _pruned(a) == []
        assert _pruned(b) == []
        assert len(_epochs(a)) == 1
        assert _epochs(b) == []

        killed = time.monotonic()
        assert a.proc is not None
        a.proc.send_signal(signal.SIGKILL)
        a.wait_exit(10)
        wait_until(lambda: _leads(b), timeout=LEASE_SECS + 10, every=0.05, what="B to lead")
        assert time.monotonic() - killed < LEASE_SECS + MARGIN_SECS
        wait_until(lambda: _scalar(pg_url, old) == 0, what="B to prune the old changelog rows")
        wait_until(lambda: _pruned(b) == [3], what="B's pruning log line")
        (a_epoch,) = _epochs(a)
        (b_epoch,) = _epochs(b)
        assert b_epoch > a_epoch
        assert "no longer leads" not in a.text()  # killed: it never stepped down, its lease ran out

        a.start()  # back, as a follower: B holds the lease
        wait_until(lambda: not _leads(a), what="A to answer as a follower")
        assert _leads(b)
        stopped = time.monotonic()
        assert b.proc is not None
        b.proc.send_signal(signal.SIGTERM)  # it releases the lease as soon as it begins to stop
        wait_until(lambda: _leads(a), timeout=LEASE_SECS + 10, every=0.05, what="A to lead again")
        # at once: waiting for the released lease to expire would take over 2/3 of it after the last renewal
        assert time.monotonic() - stopped < LEASE_SECS * 2 / 3
        assert b.wait_exit(10) == 0
        assert "this process no longer leads" in b.text()
        assert "this process is stopping" in b.text()
        assert _epochs(a)[-1] > b_epoch
        assert _pruned(a) == []  # nothing old was left for A's new tenure
    finally:
        a.stop()
        b.stop()
