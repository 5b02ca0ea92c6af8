"""`specai server --workers N`: several real server processes on one port, one PostgreSQL database.

The workers are observed from outside, as an operator would: they are the server process's children in /proc,
each holds its own established connections to the port (socket inodes in /proc/<pid>/fd matched against
/proc/net/tcp) and its own LISTEN connection in pg_stat_activity. Auth stays off (loopback): who may call is not
what these tests are about.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import httpx
import pytest
from databases import pg_admin_url, pg_execute
from live import PASSWORD, ServerProcess, add_user, free_port, make_home, run_cli, wait_until
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.live

SESSION = "workers"


# --- what /proc and PostgreSQL show ---------------------------------------------------------------------------


def children(pid: int) -> set[int]:
    """The live (not yet reaped or zombie) child processes of `pid`."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def established(port: int) -> set[int]:
    """Socket inodes of the established connections whose local end is `port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    inodes.add(int(fields[9]))
    return inodes


def sockets_of(pid: int) -> set[int]:
    inodes = set()
    with os.scandir(f"/proc/{pid}/fd") as fds:
        for fd in fds:
            try:
                target = os.readlink(fd.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def connections_per_worker(server: ServerProcess) -> dict[int, int]:
    """How many established connections to the server's port each worker holds."""
    assert server.proc is not None
    open_now = established(server.port)
    return {pid: len(sockets_of(pid) & open_now) for pid in children(server.proc.pid)}


def pg_rows(url: str, sql: str) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(fetch())


def application_names(url: str) -> dict[str, int]:
    database = make_url(url).database
    rows = pg_rows(
        url,
        "SELECT application_name, count(*) AS n FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid() GROUP BY 1",
    )
    return {row["application_name"]: row["n"] for row in rows}


# --- fixtures ----------------------------------------------------------------------------------------------------


def pg_home(root: Path, name: str, url: str, extra: str = "") -> Path:
    home = make_home(root, name)
    (home / "spec-ai.config.toml").write_text(f'[database]\nurl = "{url}"\n{extra}')
    return home


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[ServerProcess]:
    pg_execute(pg_url, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    home = pg_home(tmp_path_factory.mktemp("workers"), "home", pg_url)
    process = ServerProcess(home, "--workers", "2").start(timeout=60)
    try:
        yield process
    finally:
        process.stop()


def fresh_get(server: ServerProcess, path: str) -> httpx.Response:
    """One request on a connection of its own (so the kernel may hand it to either worker)."""
    with server.client() as client:
        return client.get(path)


# --- SQLite refuses ----------------------------------------------------------------------------------------------


def test_workers_on_sqlite_exit_2_before_anything_starts(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    port = free_port()
    result = run_cli(home, "server", "--port", str(port), "--workers", "2")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: --workers 2 needs [database] url on PostgreSQL: SQLite has one writer")
    assert 'README "Running several servers"' in lines[0]
    assert "listening" not in result.stdout
    assert not (home / "tls").exists()  # nothing was prepared
    assert not (home / "server.lock").exists()
    with socket.socket() as probe:  # nothing was bound
        probe.bind(("127.0.0.1", port))


def test_workers_in_the_config_on_sqlite_exit_1_naming_key_and_file(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    config = home / "spec-ai.config.toml"
    config.write_text("[server]\nworkers = 3\n")
    result = run_cli(home, "server", "--port", str(free_port()))
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == (
        f"error: [server] workers = 3 in {config} needs [database] url on PostgreSQL: SQLite has one writer "
        'at a time and one server per database file; serve with one worker, or see README "Running several '
        'servers"'
    )
    assert not (home / "tls").exists()


def test_the_flag_wins_over_the_config(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    (home / "spec-ai.config.toml").write_text("[server]\nworkers = 3\n")
    server = ServerProcess(home, "--workers", "1").start()  # SQLite, one process: as without the key
    try:
        assert server.proc is not None
        assert "workers" not in server.text()
        assert fresh_get(server, "/health").status_code == 200
        assert children(server.proc.pid) == set()
    finally:
        server.stop()


# --- PostgreSQL serves -------------------------------------------------------------------------------------------


def test_two_workers_serve_one_port_and_both_answer(server: ServerProcess, pg_url: str) -> None:
    assert server.proc is not None
    assert server.text().count("listening on") == 1
    assert "(2 workers)" in server.text()
    assert "may run out of connections" not in server.text()
    workers = children(server.proc.pid)
    assert len(workers) == 2
    for pid in workers:
        assert "specai.server.workers" in Path(f"/proc/{pid}/cmdline").read_text()

    def burst(_: int) -> list[int]:
        return [fresh_get(server, "/health").status_code for _ in range(10)]

    with ThreadPoolExecutor(8) as pool:
        codes = [code for batch in pool.map(burst, range(8)) for code in batch]
    assert codes == [200] * 80

    clients = [server.client() for _ in range(16)]  # keep-alive: each connection stays open on its worker
    try:
        for client in clients:
            assert client.get("/health").status_code == 200
        held = connections_per_worker(server)
        assert set(held) == workers
        assert sum(held.values()) >= 16
        assert all(count > 0 for count in held.values()), held  # the kernel spread them: both answered
    finally:
        for client in clients:
            client.close()
    names = wait_until(lambda: (n := application_names(pg_url)).get("specai listener") == 2 and n)
    assert names.get("specai", 0) >= 2  # each worker's pool, named so a process can count its peers


def test_graph_writes_through_both_workers_are_all_present(server: ServerProcess) -> None:
    def write(start: int) -> list[int]:
        made = []
        for n in range(start, start + 25):
            with server.client() as client:
                body = {
                    "session_id": SESSION,
                    "node_type": "entity",
                    "label": f"n{n}",
                    "properties": {"n": n},
                }
                response = client.post("/graph/nodes", json=body)
            assert response.status_code == 201, response.text
            made.append(int(response.json()["id"]))
        return made

    with ThreadPoolExecutor(8) as pool:
        acknowledged = {node for batch in pool.map(write, range(0, 200, 25)) for node in batch}
    assert len(acknowledged) == 200
    stored: set[int] = set()
    labels: set[str] = set()
    cursor = None
    with server.client() as client:
        while True:
            params: dict[str, str | int] = {"session_id": SESSION, "limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/graph/nodes", params=params).json()
            stored |= {node["id"] for node in page["nodes"]}
            labels |= {node["label"] for node in page["nodes"]}
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert stored == acknowledged
    assert labels == {f"n{n}" for n in range(200)}


def test_kill_9_of_a_worker_keeps_the_service_up_and_the_worker_comes_back(server: ServerProcess) -> None:
    assert server.proc is not None
    before = children(server.proc.pid)
    victim, survivor = sorted(before)
    os.kill(victim, signal.SIGKILL)
    assert server.lines is not None
    # The parent notices when the worker's last thread is gone, and with it the worker's listening socket (the
    # process shows as a zombie a little earlier, while other threads may still hold the socket).
    notice = server.lines.expect(f"(pid {victim}) stopped unexpectedly: killed by SIGKILL", timeout=10)
    assert "restarting it in" in notice
    assert not alive(victim)
    codes = [fresh_get(server, "/health").status_code for _ in range(30)]
    assert codes == [200] * 30  # its socket left the port's group with it: the survivor takes everything
    now = wait_until(lambda: len(c := children(server.proc.pid)) == 2 and c, what="a new worker")  # type: ignore[union-attr]
    new = now - before
    assert survivor in now
    assert len(new) == 1

    def new_worker_answers() -> bool:
        clients = [server.client() for _ in range(8)]
        try:
            for client in clients:
                client.get("/health").raise_for_status()
            return connections_per_worker(server).get(next(iter(new)), 0) > 0
        finally:
            for client in clients:
                client.close()

    wait_until(new_worker_answers, timeout=60, what="the restarted worker to answer")
    assert server.text().count("listening on") == 1  # a restart is no new start


def test_sigterm_stops_every_worker_within_5_s(server: ServerProcess) -> None:
    assert server.proc is not None
    workers = children(server.proc.pid)
    assert len(workers) == 2
    with server.client() as client, client.stream("GET", "/graph/stream", params={"session_id": SESSION}):
        elapsed = server.stop(signal.SIGTERM)
    assert elapsed < 5, server.text()
    assert server.proc.returncode == 0, server.text()
    assert not any(alive(pid) for pid in workers)
    assert "specai server stopped" in server.text()


def test_kill_9_of_the_parent_takes_its_workers_with_it(tmp_path: Path, pg_url: str) -> None:
    home = pg_home(tmp_path, "orphans", pg_url)
    server = ServerProcess(home, "--workers", "2").start(timeout=60)
    assert server.proc is not None
    workers = children(server.proc.pid)
    assert len(workers) == 2
    server.proc.kill()  # no chance to stop them: each worker gets SIGTERM from the kernel (PR_SET_PDEATHSIG)
    assert server.wait_exit(10) == -signal.SIGKILL
    gone = wait_until(lambda: not any(alive(pid) for pid in workers), timeout=10, what="the workers to exit")
    assert gone
    again = ServerProcess(home, "--workers", "2", port=server.port)  # the home and the port are free again
    again.start(timeout=60)
    try:
        assert fresh_get(again, "/health").status_code == 200
    finally:
        again.stop()


# --- the mesh ----------------------------------------------------------------------------------------------------


def test_each_worker_joins_the_mesh_as_the_same_member(tmp_path: Path, pg_url: str) -> None:
    registry_home = make_home(tmp_path, "registry")
    add_user(registry_home, "root", role="admin")
    add_user(registry_home, "mesh-w", role="mesh")
    (registry_home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\n")
    mesh = '[mesh]\nusername = "mesh-w"\npassword_source = "env:MESH_PASSWORD"\nheartbeat_interval_secs = 1\n'
    member_home = pg_home(tmp_path, "member", pg_url, mesh)
    registry = ServerProcess(registry_home).start()
    try:
        join = ("--join", registry.url, "--join-fingerprint", registry.fingerprint)
        member = ServerProcess(member_home, "--workers", "2", *join, MESH_PASSWORD=PASSWORD).start(timeout=60)
        try:
            instance = (member_home / "instance_id").read_text().strip()
            token = registry.login("root")

            def listed() -> list[dict[str, str]]:
                with registry.client(token) as client:
                    found = client.get("/registry/agents").json()["instances"]
                return [m for m in found if m["instance_id"] == instance and m["status"] == "live"]

            assert len(wait_until(listed, what="the member in the registry")) == 1  # one member, not two
            joined = lambda: "joined the mesh at" in member.text()  # noqa: E731 - it may precede the listening line
            assert wait_until(joined, timeout=20, what="the member's join line")
            time.sleep(1)  # the second worker's join, had it been printed too
            assert member.text().count("joined the mesh at") == 1  # said once for both workers
        finally:
            member.stop()
        wrong = "AA:" * 31 + "AA"
        refused = ServerProcess(
            member_home,
            "--workers",
            "2",
            "--join",
            registry.url,
            "--join-fingerprint",
            wrong,
            MESH_PASSWORD=PASSWORD,
        )
        with contextlib.suppress(RuntimeError):
            refused.start(timeout=60)  # it may exit before printing its listening line, or right after
        assert refused.proc is not None
        code = refused.wait_exit(20)
        assert code == 5, refused.text()
        assert refused.text().count("error: cannot join the mesh") == 1
        assert registry.fingerprint in refused.text()
        assert children(refused.proc.pid) == set()
    finally:
        registry.stop()


# --- failures at start -------------------------------------------------------------------------------------------


@pytest.fixture
def one_connection_database() -> Iterator[str]:
    """A database owned by a role PostgreSQL lets hold one connection: enough for the start-up checks, not for
    two workers."""
    admin = pg_admin_url()
    suffix = os.urandom(4).hex()
    role, database = f"specai_one_{suffix}", f"specai_one_{suffix}"
    pg_execute(admin, f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 1")
    pg_execute(admin, f"CREATE DATABASE {database} OWNER {role}")
    try:
        yield make_url(admin).set(username=role, database=database).render_as_string(hide_password=False)
    finally:
        pg_execute(admin, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        pg_execute(admin, f"DROP ROLE IF EXISTS {role}")


def test_a_worker_that_keeps_failing_at_start_ends_the_server_with_exit_3(
    tmp_path: Path, one_connection_database: str
) -> None:
    home = pg_home(tmp_path, "home", one_connection_database)
    server = ServerProcess(home, "--workers", "2")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="server exited 3") as failed:
        server.start(timeout=120)
    text = str(failed.value)
    assert "failed to start: cannot open database" in text  # each failure is logged, with its reason
    assert "restarting it in" in text
    last = text.strip().splitlines()[-1]
    assert last.startswith("error: server worker")
    assert "failed to start 3 times in a row: cannot open database" in last
    assert "too many connections" in last
    assert time.monotonic() - started < 90
    assert server.proc is not None
    assert children(server.proc.pid) == set()


# --- the connection budget ---------------------------------------------------------------------------------------


def test_a_pool_beyond_max_connections_warns_at_start_and_still_serves(tmp_path: Path, pg_url: str) -> None:
    home = pg_home(tmp_path, "budget", pg_url, "pool_size = 1000\n")
    server = ServerProcess(home).start(timeout=60)
    try:
        (warning,) = [line for line in server.text().splitlines() if "may run out of connections" in line]
        assert warning.startswith("warning: PostgreSQL may run out of connections: this server opens up to ")
        assert "(pool_size 1000 + max_overflow 5 + 1 listener + 1 leader) x 1 worker = 1007" in warning
        limits = (
            pg_rows(pg_url, "SHOW max_connections")[0][0],
            pg_rows(pg_url, "SHOW superuser_reserved_connections")[0][0],
        )
        assert f"(max_connections {limits[0]} - {limits[1]} reserved)" in warning
        assert "lower [database] pool_size or max_overflow or --workers, or raise max_connections" in warning
        assert fresh_get(server, "/health").status_code == 200  # a warning, not a refusal
    finally:
        server.stop()
