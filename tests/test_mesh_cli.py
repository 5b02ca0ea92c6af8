"""`specai mesh ...`: the real CLI (separate processes) against one real server over TLS with auth on. The server
lists itself as a member (the leader); other members are registered directly over HTTPS with fake addresses."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live import PASSWORD, ServerProcess, free_port, run_cli

pytestmark = pytest.mark.live

LEADER_TIMEOUT = 3  # seconds; a member not heard from for longer is `stale`
MAX_PAYLOAD = 1024
MAX_INBOX_BYTES = 2048  # so that a few messages already take several pages
VALID_TYPES = ("Query", "TaskDelegation", "WorkflowStageResult")


# --- fixtures and helpers -------------------------------------------------------------------------------------


class Mesh:
    """The server, a token for registering fake members, and a client home logged in with `specai login`."""

    def __init__(self, server: ServerProcess, token: str, client_home: Path) -> None:
        self.server = server
        self.token = token
        self.home = client_home
        self.self_id = ""

    def register(self, *instance_ids: str, agents: tuple[str, ...] = ()) -> None:
        """Register (or refresh: a heartbeat) fake members."""
        with self.server.client(self.token) as http:
            for instance_id in instance_ids:
                response = http.post(
                    "/registry/register",
                    json={
                        "instance_id": instance_id,
                        "hostname": "127.0.0.1",
                        "port": 4001,
                        "capabilities": ["query"],
                        "agent_profiles": list(agents),
                    },
                )
                assert response.status_code == 200, response.text

    def run(self, *args: str, home: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        """`specai mesh ARGS` from the logged-in home (pinned and with a token, both saved by `specai login`)."""
        env.setdefault("SPECAI_SERVER", self.server.url)
        return run_cli(home or self.home, "mesh", *args, timeout=30, environ=env)

    def json(self, *args: str) -> Any:
        return json.loads(ok(self.run(*args, "--json")).stdout)

    def inbox(self, instance_id: str) -> list[dict[str, Any]]:
        """What the server holds for a member, read over HTTPS (the CLI's own `inbox` is tested on its own)."""
        with self.server.client(self.token) as http:
            response = http.get(f"/messages/{instance_id}")
        assert response.status_code == 200, response.text
        messages: list[dict[str, Any]] = response.json()["messages"]
        return messages

    def member_ids(self, *, live_only: bool = False) -> set[str]:
        with self.server.client(self.token) as http:
            response = http.get("/registry/agents")
        assert response.status_code == 200, response.text
        instances = response.json()["instances"]
        return {m["instance_id"] for m in instances if not live_only or m["status"] == "live"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("mesh-cli")
    home, client_home = base / "server", base / "client"
    home.mkdir(mode=0o700)
    client_home.mkdir(mode=0o700)
    for user, role in (("alice", "admin"), ("carol", "user"), ("mallory", "mesh")):
        added = run_cli(
            home, "auth", "add-user", user, "--role", role, "--password-stdin", input=PASSWORD + "\n"
        )
        assert added.returncode == 0, added.stderr
    (home / "spec-ai.config.toml").write_text(
        "[auth]\nenabled = true\n"
        f"[mesh]\nleader_timeout_secs = {LEADER_TIMEOUT}\nmax_payload_bytes = {MAX_PAYLOAD}\n"
        f"max_inbox_bytes = {MAX_INBOX_BYTES}\n"
    )
    server = ServerProcess(home).start()
    try:
        with server.client() as http:
            response = http.post("/auth/token", json={"username": "alice", "password": PASSWORD})
            assert response.status_code == 200, response.text
        login = run_cli(
            client_home,
            "login",
            "--server",
            server.url,
            "--username",
            "alice",
            "--password-stdin",
            "--fingerprint",
            server.fingerprint,
            input=PASSWORD + "\n",
        )
        assert login.returncode == 0, login.stderr
        found = Mesh(server, response.json()["token"], client_home)
        found.self_id = found.json("members")["self_id"]
        yield found
    finally:
        server.stop()


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The run failed with `code` and said why in exactly one stderr line, without a traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    return lines[0]


def row(stdout: str, first_cell: str) -> str:
    """The table line whose first cell starts with `first_cell`."""
    found = [line for line in stdout.splitlines() if line.lstrip("│ ").startswith(first_cell + " ")]
    assert len(found) == 1, stdout
    return found[0]


def queued_id(result: subprocess.CompletedProcess[str]) -> str:
    words = ok(result).stdout.split()
    assert words[0] == "queued", result.stdout
    return words[1]


# --- members ------------------------------------------------------------------------------------------------------


def test_members_json_and_table(mesh: Mesh) -> None:
    mesh.register("gone-1")
    time.sleep(LEADER_TIMEOUT + 0.5)  # gone-1 is now stale
    mesh.register("live-1", agents=("default", "coder"))

    body = mesh.json("members")
    assert set(body) == {"instances", "leader_id", "self_id"}
    by_id = {m["instance_id"]: m for m in body["instances"]}
    assert body["leader_id"] == body["self_id"] == mesh.self_id
    assert by_id[mesh.self_id]["is_leader"] is True
    assert by_id[mesh.self_id]["status"] == "live"
    assert by_id["live-1"]["status"] == "live"
    assert by_id["live-1"]["is_leader"] is False
    assert by_id["gone-1"]["status"] == "stale"
    assert by_id["live-1"]["base_url"] == "https://127.0.0.1:4001"

    mesh.register("live-1", agents=("default", "coder"))
    table = ok(mesh.run("members")).stdout
    header = table.splitlines()[1]
    for column in ("instance", "status", "leader", "base URL", "agents", "last heartbeat", "capabilities"):
        assert column in header, table
    me = row(table, mesh.self_id)
    assert "(this server)" in me
    assert "★" in me
    assert "live" in me
    live = row(table, "live-1")
    assert "live" in live
    assert "★" not in live
    assert "(this server)" not in live
    assert "https://127.0.0.1:4001" in live
    assert "coder, default" in live
    assert "query" in live
    assert " s ago" in live
    assert "stale" in row(table, "gone-1")
    assert f"leader: {mesh.self_id}" in table.splitlines()[-1]


# --- send, inbox, ack ---------------------------------------------------------------------------------------------


def test_send_to_one_member_and_read_its_inbox(mesh: Mesh) -> None:
    mesh.register("a1", "a2")
    sent = mesh.run(
        "send",
        "--from",
        "a1",
        "--to",
        "a2",
        "--type",
        "task_delegation",  # snake_case is accepted and stored PascalCase
        "--payload",
        '{"task": "summarise", "doc": 7}',
        "--correlation-id",
        "c-1",
    )
    message_id = queued_id(sent)
    assert sent.stdout.strip() == f"queued {message_id} for 1 member: a2"

    [message] = mesh.json("inbox", "a2")["messages"]
    assert message["message_id"] == message_id
    assert message["source_instance"] == "a1"
    assert message["target_instance"] == "a2"
    assert message["message_type"] == "TaskDelegation"
    assert message["payload"] == {"task": "summarise", "doc": 7}
    assert message["correlation_id"] == "c-1"
    assert mesh.inbox("a1") == []

    table = ok(mesh.run("inbox", "a2"))
    line = row(table.stdout, message_id)
    for cell in ("a1", "TaskDelegation", "c-1", '{"task": "summarise", "doc": 7}'):
        assert cell in line, table.stdout
    assert "task_delegation" not in table.stdout
    assert "specai mesh ack a2" in table.stderr
    assert ok(mesh.run("inbox", "a1")).stdout.strip() == "no messages for a1"

    # --from defaults to the server itself; a custom type; --json prints the server's answer
    body = mesh.json("send", "--to", "a2", "--type", "custom:ping", "--payload", '"hello"')
    assert body["status"] == "queued"
    assert body["delivered_to"] == ["a2"]
    second = mesh.inbox("a2")[1]
    assert second["message_id"] == body["message_id"]
    assert second["source_instance"] == mesh.self_id
    assert second["message_type"] == {"Custom": "ping"}
    assert second["payload"] == "hello"
    assert "custom:ping" in row(ok(mesh.run("inbox", "a2")).stdout, body["message_id"])


def test_broadcast_skips_the_sender_and_ack_is_per_recipient(mesh: Mesh) -> None:
    mesh.register("b1", "b2", "b3")
    others = mesh.member_ids() - {"b1"}
    sent = mesh.json("send", "--from", "b1", "--broadcast", "--type", "Notification", "--payload", "[1, 2]")
    # every member but the sender; a stale member of an earlier test may be evicted between the two calls
    delivered = set(sent["delivered_to"])
    assert len(delivered) == len(sent["delivered_to"])
    assert {"b2", "b3", mesh.self_id} <= delivered <= others
    assert not (others - delivered) & mesh.member_ids(live_only=True)  # only stale members were skipped
    message_id = sent["message_id"]

    assert mesh.inbox("b1") == []
    for member in ("b2", "b3", mesh.self_id):
        assert message_id in [m["message_id"] for m in mesh.inbox(member)], member
    [message] = mesh.inbox("b2")
    assert message["target_instance"] is None
    assert message["payload"] == [1, 2]

    acked = ok(mesh.run("ack", "b2", message_id))
    assert acked.stdout.strip() == "acknowledged 1 message for b2"
    assert mesh.inbox("b2") == []
    assert [m["message_id"] for m in mesh.inbox("b3")] == [message_id]  # b3 still has it

    # acknowledging it again for b2: nothing waiting, reported, exit 1; --json says which
    again = mesh.run("ack", "b2", message_id, "--json")
    assert again.returncode == 1, (again.stdout, again.stderr)
    assert json.loads(again.stdout) == {"instance_id": "b2", "acknowledged": [], "not_found": [message_id]}
    assert message_id in one_error_line(again, 1)
    assert "b2" in again.stderr
    assert [m["message_id"] for m in mesh.inbox("b3")] == [message_id]

    both = mesh.run("ack", "b3", message_id, "never-sent")
    assert both.stdout.strip() == "acknowledged 1 message for b3"
    assert "never-sent" in one_error_line(both, 1)
    assert message_id not in both.stderr
    assert mesh.inbox("b3") == []


def test_broadcast_with_no_other_member_queues_nothing(mesh: Mesh) -> None:
    with mesh.server.client(mesh.token) as http:
        for instance_id in mesh.member_ids() - {mesh.self_id}:
            assert http.delete(f"/registry/deregister/{instance_id}").status_code == 204
    mine = mesh.inbox(mesh.self_id)
    alone = ok(mesh.run("send", "--broadcast", "--type", "Notification", "--payload", '"anyone?"'))
    assert alone.stdout.strip() == (
        f"nothing queued: {mesh.self_id} is the only member, so the broadcast has no recipient"
    )
    body = mesh.json("send", "--broadcast", "--type", "Notification", "--payload", "1")
    assert body["delivered_to"] == []
    assert mesh.inbox(mesh.self_id) == mine


def test_inbox_follows_pages_and_ack_reaches_beyond_the_first(mesh: Mesh) -> None:
    mesh.register("p1", "p2")
    sent = [
        queued_id(
            mesh.run(
                "send",
                "--from",
                "p1",
                "--to",
                "p2",
                "--type",
                "Query",
                "--payload",
                json.dumps("x" * 900 + str(n)),
            )
        )
        for n in range(5)
    ]
    with mesh.server.client(mesh.token) as http:
        first = http.get("/messages/p2").json()
    assert len(first["messages"]) == 2
    assert first["more"] is True
    body = mesh.json("inbox", "p2")
    assert [m["message_id"] for m in body["messages"]] == sent
    assert body["more"] is False
    cut = mesh.json("inbox", "p2", "--limit", "3")
    assert [m["message_id"] for m in cut["messages"]] == sent[:3]
    assert cut["more"] is True
    table = ok(mesh.run("inbox", "p2", "--limit", "3"))
    assert "more messages are waiting for p2" in table.stderr
    acked = ok(mesh.run("ack", "p2", sent[4], sent[0]))
    assert acked.stdout.strip() == "acknowledged 2 messages for p2"
    assert [m["message_id"] for m in mesh.json("inbox", "p2")["messages"]] == sent[1:4]


def test_a_user_account_is_refused_and_a_mesh_account_acts_only_for_its_own_members(
    mesh: Mesh, tmp_path: Path
) -> None:
    mesh.register("owned-1")  # by alice, the admin
    tokens = {}
    with mesh.server.client() as http:
        for user in ("carol", "mallory"):
            answer = http.post("/auth/token", json={"username": user, "password": PASSWORD})
            assert answer.status_code == 200, answer.text
            tokens[user] = answer.json()["token"]
    home = tmp_path / "other"
    home.mkdir(mode=0o700)
    pinned = {"SPECAI_FINGERPRINT": mesh.server.fingerprint}
    as_carol = {**pinned, "SPECAI_TOKEN": tokens["carol"]}
    args: tuple[str, ...]
    for args in (
        ("members",),
        ("inbox", "owned-1"),
        ("send", "--from", "owned-1", "--to", mesh.self_id, "--type", "Query", "--payload", "1"),
    ):
        assert "mesh" in one_error_line(mesh.run(*args, home=home, **as_carol), 1), args
    as_mallory = {**pinned, "SPECAI_TOKEN": tokens["mallory"]}
    assert ok(mesh.run("members", home=home, **as_mallory)).stdout
    for args in (
        ("inbox", "owned-1"),
        ("ack", "owned-1", "some-id"),
        ("send", "--to", "owned-1", "--type", "Query", "--payload", "1"),  # --from: the server itself
        ("send", "--from", "owned-1", "--to", mesh.self_id, "--type", "Query", "--payload", "1"),
    ):
        # a heartbeat: on a loaded machine the CLI calls so far can take longer than the eviction time
        mesh.register("owned-1")
        line = one_error_line(mesh.run(*args, home=home, **as_mallory), 1)
        assert "belongs to another account" in line, (args, line)
    assert mesh.inbox("owned-1") == []


# --- errors -------------------------------------------------------------------------------------------------------


def test_unknown_target_or_sender_stores_nothing(mesh: Mesh) -> None:
    mesh.register("c1", "c2")
    mine = mesh.inbox(mesh.self_id)
    for args, name in (
        (("--from", "c1", "--to", "nobody-here"), "nobody-here"),
        (("--from", "ghost", "--to", "c2"), "ghost"),
        (("--from", "ghost", "--broadcast"), "ghost"),
    ):
        result = mesh.run("send", *args, "--type", "Query", "--payload", "{}")
        assert name in one_error_line(result, 1)
        assert result.stdout == ""
    assert mesh.inbox("c2") == []
    assert mesh.inbox("c1") == []
    assert mesh.inbox(mesh.self_id) == mine

    unknown = mesh.run("inbox", "nobody-here")
    assert "nobody-here" in one_error_line(unknown, 1)
    assert "nobody-here" in one_error_line(mesh.run("ack", "nobody-here", "some-id"), 1)


def test_bad_type_lists_the_valid_ones(mesh: Mesh) -> None:
    mesh.register("d1")
    line = one_error_line(mesh.run("send", "--to", "d1", "--type", "Gossip", "--payload", "1"), 1)
    assert "Gossip" in line
    assert "custom:NAME" in line
    for name in VALID_TYPES:
        assert name in line
    assert mesh.inbox("d1") == []


def test_payload_over_the_limit_is_refused(mesh: Mesh) -> None:
    mesh.register("e1")
    big = json.dumps({"text": "x" * (MAX_PAYLOAD + 10)})
    line = one_error_line(mesh.run("send", "--to", "e1", "--type", "Query", "--payload", big), 1)
    assert str(MAX_PAYLOAD) in line
    assert "max_payload_bytes" in line
    assert mesh.inbox("e1") == []


def test_usage_errors_exit_2_before_anything_is_sent(mesh: Mesh) -> None:
    # pointed at a port where nothing listens: a usage error must come before any connection attempt
    nowhere = f"https://127.0.0.1:{free_port()}"
    cases = [
        (("--type", "Query", "--payload", "1"), "exactly one of --to"),
        (("--to", "x", "--broadcast", "--type", "Query", "--payload", "1"), "exactly one of --to"),
        (("--to", "x", "--type", "Query", "--payload", "{task: 1}"), "--payload is not valid JSON"),
        (("--to", "x", "--type", "Query", "--payload", "NaN"), "--payload is not valid JSON"),
        (("--to", "x", "--type", "Query", "--payload", ""), "--payload is not valid JSON"),
        (("--to", "x", "--type", "custom:", "--payload", "1"), "custom:NAME"),
    ]
    for args, text in cases:
        assert text in one_error_line(mesh.run("send", *args, SPECAI_SERVER=nowhere), 2), args
    missing = mesh.run("send", "--to", "x", "--type", "Query", SPECAI_SERVER=nowhere)
    assert missing.returncode == 2
    assert "--payload" in missing.stderr


def test_without_login_exit_4(mesh: Mesh, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    fresh.mkdir(mode=0o700)
    for args in (
        ("members",),
        ("send", "--broadcast", "--type", "Query", "--payload", "1"),
        ("inbox", mesh.self_id),
        ("ack", mesh.self_id, "some-id"),
    ):
        result = mesh.run(*args, home=fresh, SPECAI_FINGERPRINT=mesh.server.fingerprint)
        assert "login" in one_error_line(result, 4), args


def test_help_has_examples(tmp_path: Path) -> None:
    home = tmp_path
    listing = run_cli(home, "mesh", "--help")
    assert listing.returncode == 0
    for command in ("members", "send", "inbox", "ack"):
        assert command in listing.stdout
        shown = run_cli(home, "mesh", command, "--help")
        assert shown.returncode == 0, shown.stdout
        assert "specai mesh " + command in shown.stdout, shown.stdout
        assert "--server" in shown.stdout
        assert "--fingerprint" in shown.stdout
        assert "--json" in shown.stdout
