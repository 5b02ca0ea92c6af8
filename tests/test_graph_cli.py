"""`specai graph ...`: the real CLI (separate processes) against a real server over TLS, including a live `watch`
that must survive a server restart without missing or repeating a change."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from live import PASSWORD, ServerProcess, cli_env, run_cli

pytestmark = pytest.mark.live

VALID_NODE_TYPES = "entity, concept, fact, message, tool_result, event, goal"


# --- fixtures and helpers -------------------------------------------------------------------------------------


def make_repo(path: Path) -> Path:
    """A tiny code repository for `/bootstrap` to index."""
    (path / "src" / "demo").mkdir(parents=True)
    (path / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0.1.0"\n')
    (path / "README.md").write_text("# Demo\n\nA small repository.\n")
    (path / "src" / "demo" / "__init__.py").write_text("VALUE = 1\n")
    return path


@pytest.fixture(scope="module")
def graph_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Auth off; `[graph] bootstrap_root` points at a small repository."""
    base = tmp_path_factory.mktemp("graph-cli")
    home = base / "home"
    home.mkdir(mode=0o700)
    repo = make_repo(base / "repo")
    (home / "spec-ai.config.toml").write_text(f'[graph]\nbootstrap_root = "{repo}"\n')
    proc = ServerProcess(home).start()
    yield proc
    proc.stop()


def graph(server: ServerProcess, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`specai graph ARGS` against `server`, pinned with SPECAI_FINGERPRINT."""
    return run_cli(
        home or server.home,
        "graph",
        *args,
        SPECAI_SERVER=server.url,
        SPECAI_FINGERPRINT=server.fingerprint,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def ok_json(server: ServerProcess, *args: str) -> Any:
    return json.loads(ok(graph(server, *args, "--json")).stdout)


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The run failed with `code` and said why in exactly one stderr line, without a traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


class Watcher:
    """`specai graph watch ...` as a background process; its stdout and stderr lines arrive in queues."""

    def __init__(self, server: ServerProcess, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "specai", "graph", "watch", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(server.home, SPECAI_SERVER=server.url, SPECAI_FINGERPRINT=server.fingerprint),
            cwd=server.home,
        )
        self.stdout: queue.Queue[str] = queue.Queue()
        self.stderr: queue.Queue[str] = queue.Queue()
        self.out_lines: list[str] = []
        self.err_lines: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.pumps = [
            threading.Thread(target=self._pump, args=(stream, sink, seen), daemon=True)
            for stream, sink, seen in (
                (self.proc.stdout, self.stdout, self.out_lines),
                (self.proc.stderr, self.stderr, self.err_lines),
            )
        ]
        for pump in self.pumps:
            pump.start()

    @staticmethod
    def _pump(stream: IO[str], sink: queue.Queue[str], seen: list[str]) -> None:
        for line in stream:
            seen.append(line.rstrip("\n"))
            sink.put(line.rstrip("\n"))

    def expect(self, sink: queue.Queue[str], match: Callable[[str], bool], timeout: float = 20) -> str:
        """The next line of `sink` that `match`es, skipping others; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = sink.get(timeout=left)
            except queue.Empty:
                break
            if match(line):
                return line
        raise AssertionError(
            f"no matching line within {timeout} s; exit={self.proc.poll()} stdout={self.out_lines} "
            f"stderr={self.err_lines}"
        )

    def next_out(self, timeout: float = 20) -> str:
        """The next stdout line (every stdout line is a change)."""
        return self.expect(self.stdout, lambda _: True, timeout)

    def expect_err(self, text: str, timeout: float = 20) -> str:
        return self.expect(self.stderr, lambda line: text in line, timeout)

    def interrupt(self, timeout: float = 10) -> int:
        """Ctrl-C; returns the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Make sure the process is gone and its pipes are closed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pump in self.pumps:
            pump.join(timeout=5)  # ends at EOF, now that the process has exited
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


# --- nodes and edges -----------------------------------------------------------------------------------------


def test_add_list_filter_and_remove(graph_server: ServerProcess) -> None:
    s = ("--session", "crud")
    alice = ok_json(
        graph_server,
        "add-node",
        *s,
        "--type",
        "entity",
        "--label",
        "Alice",
        "--properties",
        '{"role": "author"}',
    )
    assert alice["node_type"] == "entity"
    assert alice["label"] == "Alice"
    assert alice["session_id"] == "crud"
    assert alice["properties"] == {"role": "author"}
    bob_id = int(ok(graph(graph_server, "add-node", *s, "--type", "entity", "--label", "Bob")).stdout.strip())
    idea_id = int(ok(graph(graph_server, "add-node", *s, "-t", "concept", "-l", "Graphs")).stdout)
    other = ok_json(graph_server, "add-node", "--type", "fact", "--label", "elsewhere")
    assert other["session_id"] == "default"  # --session defaults to "default"

    edge = ok_json(
        graph_server,
        "add-edge",
        *s,
        "--source",
        str(alice["id"]),
        "--target",
        str(bob_id),
        "--type",
        "relates_to",
        "--predicate",
        "works with",
        "--weight",
        "0.5",
        "--properties",
        '{"since": 2020}',
    )
    assert (edge["source_id"], edge["target_id"], edge["edge_type"]) == (alice["id"], bob_id, "RELATES_TO")
    assert (edge["predicate"], edge["weight"], edge["properties"]) == ("works with", 0.5, {"since": 2020})
    uses_id = int(
        ok(
            graph(
                graph_server, "add-edge", *s, "--source", str(bob_id), "--target", str(idea_id), "-t", "USES"
            )
        ).stdout.strip()
    )

    listed = ok_json(graph_server, "nodes", *s)
    assert [n["label"] for n in listed["nodes"]] == ["Graphs", "Bob", "Alice"]  # newest first
    assert listed["count"] == 3
    assert listed["next_cursor"] is None
    entities = ok_json(graph_server, "nodes", *s, "--type", "entity")
    assert [n["label"] for n in entities["nodes"]] == ["Bob", "Alice"]
    assert ok_json(graph_server, "edges", *s)["count"] == 2
    assert [e["id"] for e in ok_json(graph_server, "edges", *s, "--type", "uses")["edges"]] == [uses_id]
    assert [e["id"] for e in ok_json(graph_server, "edges", *s, "--source", str(alice["id"]))["edges"]] == [
        edge["id"]
    ]
    assert [e["id"] for e in ok_json(graph_server, "edges", *s, "--target", str(idea_id))["edges"]] == [
        uses_id
    ]

    table = ok(graph(graph_server, "nodes", *s)).stdout
    for text in ("id", "type", "label", "properties", "updated", "Alice", "role=author", "concept"):
        assert text in table
    edge_table = ok(graph(graph_server, "edges", *s)).stdout
    for text in ("RELATES_TO", f"{alice['id']} -> {bob_id}", "works with", "0.5", "since=2020", "USES"):
        assert text in edge_table
    assert (
        "no nodes of type goal in session crud" in ok(graph(graph_server, "nodes", *s, "-t", "goal")).stdout
    )

    removed = ok(graph(graph_server, "rm", "edge", str(uses_id)))
    assert removed.stdout.strip() == f"deleted edge {uses_id}"
    gone = ok(graph(graph_server, "rm", "node", str(alice["id"])))
    assert gone.stdout.strip() == f"deleted node {alice['id']} and 1 edge with it"
    both = ok_json(graph_server, "rm", "node", str(bob_id), str(idea_id))
    assert both == {
        "deleted": [
            {"deleted": "node", "id": bob_id, "edges_deleted": 0},
            {"deleted": "node", "id": idea_id, "edges_deleted": 0},
        ],
        "failed": [],
    }
    assert ok_json(graph_server, "nodes", *s)["count"] == 0
    assert ok_json(graph_server, "edges", *s)["count"] == 0


def test_show(graph_server: ServerProcess) -> None:
    node = ok_json(graph_server, "add-node", "--session", "show", "-t", "goal", "-l", "Ship it")
    assert ok_json(graph_server, "show", "node", str(node["id"])) == node
    text = ok(graph(graph_server, "show", "node", str(node["id"]))).stdout
    assert "label:" in text
    assert "Ship it" in text
    assert "goal" in text
    line = one_error_line(graph(graph_server, "show", "edge", "987654"), 1)
    assert "edge 987654 not found" in line


def test_pages_and_cursor_hint(graph_server: ServerProcess) -> None:
    s = ("--session", "paging")
    ids = [ok_json(graph_server, "add-node", *s, "-t", "fact", "-l", f"fact {i}")["id"] for i in range(5)]
    first = ok_json(graph_server, "nodes", *s, "--limit", "2")
    assert [n["id"] for n in first["nodes"]] == ids[::-1][:2]
    assert first["next_cursor"]
    second = ok_json(graph_server, "nodes", *s, "--limit", "2", "--cursor", first["next_cursor"])
    assert [n["id"] for n in second["nodes"]] == ids[::-1][2:4]

    table = ok(graph(graph_server, "nodes", *s, "--limit", "2"))
    assert "fact 4" in table.stdout
    assert "fact 2" not in table.stdout
    hint = f"more: specai graph nodes --session paging --limit 2 --cursor {first['next_cursor']}"
    assert hint in table.stderr

    everything = ok_json(graph_server, "nodes", *s, "--limit", "2", "--all")
    assert [n["id"] for n in everything["nodes"]] == ids[::-1]
    assert everything["count"] == 5
    assert everything["next_cursor"] is None
    last = ok(graph(graph_server, "nodes", *s, "--limit", "2", "--all"))
    assert "more:" not in last.stderr
    assert all(f"fact {i}" in last.stdout for i in range(5))


# --- errors ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "says"),
    [("{bad json", "not valid JSON"), ("[1, 2]", "must be a JSON object"), ("42", "must be a JSON object")],
)
def test_bad_properties_is_a_usage_error(graph_server: ServerProcess, properties: str, says: str) -> None:
    for command in (
        ("add-node", "--session", "bad-props", "-t", "entity", "-l", "x"),
        ("add-edge", "--session", "bad-props", "--source", "1", "--target", "2", "-t", "USES"),
    ):
        line = one_error_line(graph(graph_server, *command, "--properties", properties), 2)
        assert "--properties" in line
        assert says in line
    assert ok_json(graph_server, "nodes", "--session", "bad-props")["count"] == 0  # nothing was sent


def test_unknown_node_type_shows_the_valid_ones(graph_server: ServerProcess) -> None:
    line = one_error_line(graph(graph_server, "add-node", "-t", "person", "-l", "Zoe"), 1)
    assert "person" in line
    assert VALID_NODE_TYPES in line
    line = one_error_line(graph(graph_server, "nodes", "--type", "person"), 1)
    assert VALID_NODE_TYPES in line


def test_remove_missing_ids(graph_server: ServerProcess) -> None:
    line = one_error_line(graph(graph_server, "rm", "node", "999999"), 1)
    assert line == "error: node 999999 not found"
    one_error_line(graph(graph_server, "rm", "edge", "999999"), 1)

    keep = ok_json(graph_server, "add-node", "--session", "rm-missing", "-t", "fact", "-l", "doomed")
    mixed = graph(graph_server, "rm", "node", "999998", str(keep["id"]), "--json")
    assert mixed.returncode == 1
    body = json.loads(mixed.stdout)
    assert body["deleted"] == [{"deleted": "node", "id": keep["id"], "edges_deleted": 0}]
    assert body["failed"] == [{"id": 999998, "error": "node 999998 not found", "code": "not_found"}]
    assert mixed.stderr.strip() == "error: node 999998 not found"
    assert ok_json(graph_server, "nodes", "--session", "rm-missing")["count"] == 0


def test_edge_to_missing_node_and_bad_weight(graph_server: ServerProcess) -> None:
    node = ok_json(graph_server, "add-node", "--session", "bad-edge", "-t", "entity", "-l", "lonely")
    line = one_error_line(
        graph(
            graph_server,
            "add-edge",
            "--session",
            "bad-edge",
            "--source",
            str(node["id"]),
            "--target",
            "999997",
            "-t",
            "USES",
        ),
        1,
    )
    assert "target node 999997 not found" in line
    line = one_error_line(
        graph(
            graph_server,
            "add-edge",
            "--session",
            "bad-edge",
            "--source",
            str(node["id"]),
            "--target",
            str(node["id"]),
            "-t",
            "USES",
            "--weight",
            "3",
        ),
        1,
    )
    assert "weight" in line


def test_untrusted_server_exits_5(graph_server: ServerProcess, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    stranger.mkdir(mode=0o700)
    for args in (("nodes",), ("watch",)):
        result = run_cli(stranger, "graph", *args, "--server", graph_server.url)
        assert result.returncode == 5, result.stderr
        assert graph_server.fingerprint in result.stderr


# --- bootstrap -------------------------------------------------------------------------------------------------


def test_bootstrap_twice_gives_the_same_graph(graph_server: ServerProcess) -> None:
    s = ("--session", "boot")
    first = ok_json(graph_server, "bootstrap", *s)
    assert first["session_id"] == "boot"
    assert first["nodes_created"] >= 3
    assert first["edges_created"] >= 2
    nodes = ok_json(graph_server, "nodes", *s, "--all")
    edges = ok_json(graph_server, "edges", *s, "--all")
    assert nodes["count"] == first["nodes_created"]
    assert edges["count"] == first["edges_created"]
    assert first["root_node_id"] in {n["id"] for n in nodes["nodes"]}

    again = ok(graph(graph_server, "bootstrap", *s))
    assert f"bootstrapped session boot (root node {first['root_node_id']})" in again.stdout
    assert "nodes: 0 created, 0 updated, 0 removed; edges: 0 created, 0 removed" in again.stdout
    third = ok_json(graph_server, "bootstrap", *s)
    assert third == {**first, "nodes_created": 0, "edges_created": 0}
    assert ok_json(graph_server, "nodes", *s, "--all") == nodes
    assert ok_json(graph_server, "edges", *s, "--all") == edges

    assert ok_json(graph_server, "bootstrap")["session_id"] == "default"


# --- watch -----------------------------------------------------------------------------------------------------


def test_watch_reset_warns_and_continues(graph_server: ServerProcess) -> None:
    watcher = Watcher(graph_server, "--session", "ahead", "--since", "999999999")
    try:
        warning = watcher.expect_err("warning:")
        assert "newest change is" in warning
        node = ok_json(graph_server, "add-node", "--session", "ahead", "-t", "event", "-l", "after reset")
        line = watcher.next_out()
        assert line.endswith(f'create node {node["id"]} event "after reset"')
        assert watcher.interrupt() == 130
    finally:
        watcher.kill()


def test_watch_reconnects_after_a_silent_connection(graph_server: ServerProcess) -> None:
    """--idle-timeout 1 against 15 s keep-alives: the client drops the connection as dead and resumes cleanly."""
    watcher = Watcher(graph_server, "--session", "idle", "--idle-timeout", "1")
    try:
        watcher.expect_err("watching session idle after change")
        watcher.expect_err("reconnecting in 0.5 s")
        watcher.expect_err("reconnected")
        node = ok_json(graph_server, "add-node", "--session", "idle", "-t", "fact", "-l", "still here")
        assert watcher.next_out().endswith(f'create node {node["id"]} fact "still here"')
        assert watcher.interrupt() == 130
        assert len(watcher.out_lines) == 1
    finally:
        watcher.kill()


def test_watch_refuses_a_changed_certificate_on_reconnect(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    server = ServerProcess(home).start()
    watcher = Watcher(server, "--session", "pinned")
    try:
        watcher.expect_err("watching session pinned")
        server.stop()
        shutil.rmtree(home / "tls")  # the next start generates a new certificate
        server = ServerProcess(home, port=server.port).start()
        assert watcher.proc.wait(timeout=30) == 5
        assert "does not match the pin" in watcher.expect_err("error:")
    finally:
        watcher.kill()
        server.stop()


def test_watch_follows_changes_and_resumes_after_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "spec-ai.config.toml").write_text("[server]\nsse_keepalive_secs = 1\n")
    server = ServerProcess(home).start()
    watchers: list[Watcher] = []
    try:
        s = ("--session", "live")
        replay = Watcher(server, *s, "--since", "0", "--json")
        watchers.append(replay)
        replay.expect_err("watching session live after change 0")

        alice = ok_json(server, "add-node", *s, "-t", "entity", "-l", "Alice")
        first = json.loads(replay.next_out())
        assert (first["operation"], first["entity_type"], first["entity_id"]) == (
            "create",
            "node",
            alice["id"],
        )
        assert first["data"]["label"] == "Alice"
        assert first["session_id"] == "live"

        # A second, human-readable watcher from "now": it must not print Alice.
        now = Watcher(server, *s)
        watchers.append(now)
        now.expect_err(f"watching session live after change {first['id']}")
        bob = ok_json(server, "add-node", *s, "-t", "entity", "-l", "Bob")
        edge = ok_json(
            server, "add-edge", *s, "--source", str(alice["id"]), "--target", str(bob["id"]), "-t", "USES"
        )
        assert now.next_out() == f'#{first["id"] + 1} create node {bob["id"]} entity "Bob"'
        assert (
            now.next_out() == f"#{first['id'] + 2} create edge {edge['id']} USES {alice['id']} -> {bob['id']}"
        )
        assert [json.loads(replay.next_out())["id"] for _ in range(2)] == [first["id"] + 1, first["id"] + 2]
        ok(graph(server, "add-node", "--session", "other", "-t", "fact", "-l", "unrelated"))  # not watched

        server.stop()
        for watcher in watchers:
            watcher.expect_err("shutting down")
            watcher.expect_err("reconnecting")
        server = ServerProcess(home, port=server.port).start()

        # Changes made right after the restart, before the watchers are back, are not lost.
        carol = ok_json(server, "add-node", *s, "-t", "concept", "-l", "Carol")
        ok(graph(server, "rm", "node", str(alice["id"])))
        for watcher in watchers:
            watcher.expect_err("reconnected")
        expected = [
            f'create node {carol["id"]} concept "Carol"',
            f"delete edge {edge['id']} USES {alice['id']} -> {bob['id']}",
            f'delete node {alice["id"]} entity "Alice"',
        ]
        assert [now.next_out().split(" ", 1)[1] for _ in expected] == expected
        replayed = [json.loads(replay.next_out()) for _ in expected]
        assert [(c["operation"], c["entity_type"], c["entity_id"]) for c in replayed] == [
            ("create", "node", carol["id"]),
            ("delete", "edge", edge["id"]),
            ("delete", "node", alice["id"]),
        ]

        # One more live change, then stop: every change was printed exactly once, in order.
        ok(graph(server, "add-node", *s, "-t", "goal", "-l", "Done"))
        now.next_out()
        replay.next_out()
        for watcher in watchers:
            assert watcher.interrupt() == 130
            assert "Traceback" not in "\n".join(watcher.err_lines)
        ids = [json.loads(line)["id"] for line in replay.out_lines]
        assert len(ids) == 7
        assert ids == sorted(set(ids))
        assert [int(line.split()[0][1:]) for line in now.out_lines] == ids[1:]
        assert [json.loads(line)["session_id"] for line in replay.out_lines] == ["live"] * 7
    finally:
        for watcher in watchers:
            watcher.kill()
        server.stop()


# --- auth ------------------------------------------------------------------------------------------------------


def test_auth_required(auth_server: ServerProcess, tmp_path: Path) -> None:
    client = tmp_path / "client"
    client.mkdir(mode=0o700)
    for args in (("watch",), ("nodes",), ("add-node", "-t", "entity", "-l", "x"), ("bootstrap",)):
        line = one_error_line(graph(auth_server, *args, home=client), 4)
        assert "login" in line

    login = run_cli(
        client,
        "login",
        "--server",
        auth_server.url,
        "--username",
        "alice",
        "--password-stdin",
        "--fingerprint",
        auth_server.fingerprint,
        input=PASSWORD + "\n",
    )
    assert login.returncode == 0, login.stderr
    node = json.loads(
        ok(graph(auth_server, "add-node", "-t", "entity", "-l", "x", "--json", home=client)).stdout
    )
    listed = json.loads(ok(graph(auth_server, "nodes", "--json", home=client)).stdout)
    assert [n["id"] for n in listed["nodes"]] == [node["id"]]
