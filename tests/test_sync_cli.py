"""`specai sync ...`: options and errors in process (CliRunner, no server), the status and conflict renderings,
then the real CLI (separate processes) against a real server over TLS."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from live import ServerProcess, add_user, cli_login, free_port, make_home, run_cli
from typer.testing import CliRunner

from specai.cli import _console as console
from specai.cli import app
from specai.cli.sync import render_conflicts, render_status
from specai.server.schemas.sync import ConflictsOut, SyncStatusOut

FP = ":".join(["AB"] * 32)
SESSION = "notes"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SPECAI_HOME for the CLI and none of the caller's SPECAI_* variables."""
    for name in ("SPECAI_SERVER", "SPECAI_TOKEN", "SPECAI_FINGERPRINT", "SPECAI_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("SPECAI_HOME", str(home))
    return home


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def one_error_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return str(lines[0])


# --- in process ------------------------------------------------------------------------------------------------------


def test_the_group_lists_its_commands_and_each_has_examples(cli: Path) -> None:
    listed = run("sync", "--help")
    assert listed.exit_code == 0
    for name in ("status", "enable", "disable", "now", "conflicts"):
        assert name in listed.output
        shown = run("sync", name, "--help")
        assert shown.exit_code == 0, shown.output
        assert "Examples:" in shown.output
        assert f"specai sync {name}" in shown.output
        assert "--json" in shown.output


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("status",), "Missing argument"),
        (("enable",), "Missing argument"),
        (("now",), "Missing argument"),
        (("conflicts", "--limit", "0"), "--limit"),
        (("conflicts", "--limit", "1001"), "--limit"),
        (("status", SESSION, "--server", "ftp://x"), "--server"),
        (("status", SESSION, "--fingerprint", "AA:BB"), "--fingerprint"),
        (("conflicts", "--session"), "--session"),
    ],
)
def test_bad_usage_exits_2_before_connecting(cli: Path, args: tuple[str, ...], expected: str) -> None:
    result = run("sync", *args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert expected in result.output


def test_an_unreachable_server_is_one_line_and_exit_1(cli: Path) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    for args in (("status", SESSION), ("enable", SESSION), ("now", SESSION), ("conflicts",)):
        result = run("sync", *args, "--server", url, "--fingerprint", FP)
        assert result.exit_code == 1, (args, result.output)
        assert one_error_line(result).startswith("error: ")
        assert "127.0.0.1" in result.stderr


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 200-column terminal, as the live runs have (COLUMNS=200), so no table cell is folded."""
    monkeypatch.setattr(console.out, "_width", 200)


def status_body(**changes: Any) -> SyncStatusOut:
    body = {
        "session_id": SESSION,
        "graph_name": "default",
        "sync_enabled": True,
        "vector_clock": {"versions": {"vm-a": 4, "vm-b": 2}},
        "last_sync_at": "2026-01-02T03:04:05+00:00",
        "pending_changes": 1,
        "peers": [
            {"instance_id": "vm-b", "their_vector": {"versions": {"vm-a": 4}}, "state": "ok",
             "reported_at": "2026-01-02T03:04:05+00:00"},
            {"instance_id": "vm-c", "their_vector": {"versions": {}}, "state": "refused",
             "last_error": "vm-c refused this server's token (401)"},
            {"instance_id": "vm-d", "their_vector": {"versions": {}}, "state": "untrusted",
             "last_error": "certificate does not match the pinned fingerprint"},
        ],
        "instance_id": "vm-a",
        "coordinator_running": True,
        **changes,
    }  # fmt: skip
    return msgspec.convert(body, SyncStatusOut)


@pytest.mark.usefixtures("wide")
def test_status_shows_every_peer_and_names_the_refused_and_untrusted_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render_status(status_body())
    shown = capsys.readouterr()
    for text in (
        "enabled",
        "running",
        "vm-a: 4, vm-b: 2",
        "1 change",
        "vm-b",
        "vm-c",
        "vm-d",
        "refused",
        "untrusted",
    ):
        assert text in shown.out, text
    warnings = shown.err.strip().splitlines()
    assert warnings == [
        "peer vm-c is refused: vm-c refused this server's token (401)",
        "peer vm-d is untrusted: certificate does not match the pinned fingerprint",
    ]


@pytest.mark.usefixtures("wide")
def test_status_says_how_to_turn_sync_on_and_that_no_coordinator_runs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    render_status(
        status_body(sync_enabled=False, coordinator_running=False, vector_clock={"versions": {}}, peers=[])
    )
    shown = capsys.readouterr()
    assert f"disabled (turn it on: specai sync enable {SESSION})" in shown.out
    assert "not running on this server ([sync] enabled = false)" in shown.out
    assert "nothing held yet" in shown.out
    assert "no peers yet" in shown.out
    assert shown.err == ""


@pytest.mark.usefixtures("wide")
def test_conflicts_show_both_values_and_the_next_page(capsys: pytest.CaptureFixture[str]) -> None:
    page = {
        "conflicts": [
            {"id": 7, "session_id": SESSION, "graph_name": "default", "entity_type": "node", "entity_id": "u-1",
             "field": "label", "resolution": "AcceptRemote", "local_version": "mine", "remote_version": "theirs",
             "winner_stamp": "2", "loser_stamp": "1", "detected_at": "2026-01-02T03:04:05+00:00"},
        ],
        "next_cursor": "7",
    }  # fmt: skip
    render_conflicts(msgspec.convert(page, ConflictsOut))
    shown = capsys.readouterr()
    for text in ("node u-1", "label", "AcceptRemote", '"mine"', '"theirs"'):
        assert text in shown.out, text
    assert shown.err.strip() == "more: specai sync conflicts --cursor 7"
    render_conflicts(ConflictsOut([], None))
    assert capsys.readouterr() == ("no conflicts\n", "")


# --- live: the real CLI against a real server ---------------------------------------------------------------------------


class Served:
    """A server (auth on, [sync] off) with session `notes`, and client homes logged in as root and carol."""

    def __init__(self, server: ServerProcess, root: Path, carol: Path, instance_id: str) -> None:
        self.server = server
        self.root = root
        self.carol = carol
        self.instance_id = instance_id

    def run(self, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(home or self.root, "sync", *args, timeout=30, SPECAI_SERVER=self.server.url)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    base = tmp_path_factory.mktemp("sync-cli")
    home = make_home(base, "server")
    add_user(home, "root", role="admin")
    add_user(home, "carol", role="user")
    (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\n")
    server = ServerProcess(home).start()
    try:
        root, carol = make_home(base, "root"), make_home(base, "carol")
        token = cli_login(root, server, "root")
        cli_login(carol, server, "carol")
        with server.client(token) as http:
            made = http.post(
                "/graph/nodes", json={"session_id": SESSION, "node_type": "fact", "label": "first"}
            )
            assert made.status_code == 201, made.text
        yield Served(server, root, carol, (home / "instance_id").read_text().strip())
    finally:
        server.stop()


@pytest.mark.live
def test_status_enable_disable_and_conflicts_with_the_real_cli(served: Served) -> None:
    before = served.json("status", SESSION)
    assert (before["session_id"], before["sync_enabled"], before["peers"]) == (SESSION, False, [])
    assert before["vector_clock"] == {"versions": {}}
    enabled = served.run("enable", SESSION)
    assert enabled.returncode == 0, enabled.stderr
    assert enabled.stdout.strip() == f"Sync enabled for graph {SESSION}/default"
    after = served.json("status", SESSION)
    assert after["sync_enabled"] is True
    assert after["vector_clock"] == {"versions": {served.instance_id: 1}}  # what was there before
    assert after["instance_id"] == served.instance_id
    table = served.run("status", SESSION)
    assert table.returncode == 0, table.stderr
    assert f"{served.instance_id}: 1" in table.stdout
    assert "enabled" in table.stdout
    assert "no peers yet" in table.stdout
    assert served.json("conflicts", "--session", SESSION) == {"conflicts": [], "next_cursor": None}
    listed = served.run("conflicts")
    assert (listed.returncode, listed.stdout.strip()) == (0, "no conflicts")
    assert served.json("disable", SESSION) == {
        "success": True,
        "message": f"Sync disabled for graph {SESSION}/default",
        "enabled": False,
    }


@pytest.mark.live
def test_errors_are_one_line_with_their_exit_codes(served: Served, tmp_path: Path) -> None:
    now = served.run("now", SESSION)  # this server runs no coordinator
    assert now.returncode == 1, (now.stdout, now.stderr)
    assert now.stderr.strip().splitlines() == [
        "error: the sync coordinator is not running on this server: set [sync] enabled = true in its config "
        "and restart it"
    ]
    other = served.run("status", SESSION, "--graph", "other")
    assert other.returncode == 1
    assert "a session holds one graph, named 'default'" in other.stderr
    user = served.run("status", SESSION, home=served.carol)  # a `user` account
    assert user.returncode == 1
    assert "mesh and admin accounts" in user.stderr
    assert len(user.stderr.strip().splitlines()) == 1
    stranger = make_home(tmp_path, "stranger")  # pinned, but not logged in
    result = run_cli(
        stranger,
        *(
            "sync",
            "status",
            SESSION,
            "--server",
            served.server.url,
            "--fingerprint",
            served.server.fingerprint,
        ),
    )
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert "specai login" in result.stderr
