"""The real `specai` CLI (separate processes) against a real server: users, login, pinning, query, streaming, pty."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError
from live import PASSWORD, RecordingTlsServer, ServerProcess, Terminal, add_user, cli_env, make_home, run_cli

pytestmark = pytest.mark.live

MOCK_REPLY = "This is a mock response from the test provider."
OTHER_FINGERPRINT = ":".join(["AB"] * 32)  # well-formed, but nobody's
SESSION_LINE = re.compile(r"session ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
SPECAI = Path(sys.executable).parent / "specai"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def verifies(password_hash: str, password: str) -> bool:
    try:
        return PasswordHasher().verify(password_hash, password)
    except VerifyMismatchError:
        return False


def credentials(home: Path) -> dict[str, str]:
    return {
        entry["username"]: entry["password_hash"]
        for entry in json.loads((home / "credentials.json").read_text())
    }


# -- servers -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Auth enabled; users alice and dave (dave is used to observe the login throttle)."""
    home = make_home(tmp_path_factory.mktemp("cli-server"))
    for name in ("alice", "dave"):
        add_user(home, name)
    (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\nmax_failed_logins = 5\n")
    proc = ServerProcess(home).start()
    yield proc
    proc.stop()


def login(
    client_home: Path, server: ServerProcess, *extra: str, password: str = PASSWORD, user: str = "alice"
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        client_home,
        "login",
        "--server",
        server.url,
        "--username",
        user,
        "--password-stdin",
        *extra,
        input=password + "\n",
    )


# -- users ---------------------------------------------------------------------------------------------------------


def test_auth_user_management(tmp_path: Path) -> None:
    home = tmp_path / "new-home"  # missing: add-user creates it 0700
    env = cli_env(home)
    piped = subprocess.run(
        f"printf 'pw-one-two\\n' | '{SPECAI}' auth add-user alice --password-stdin",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    path = home / "credentials.json"
    assert mode(path) == 0o600
    assert mode(home) == 0o700
    first_hash = credentials(home)["alice"]
    assert first_hash.startswith("$argon2id$")
    assert verifies(first_hash, "pw-one-two")
    assert isinstance(json.loads(path.read_text()), list)

    listed = run_cli(home, "auth", "list-users", "--json")
    assert listed.returncode == 0, listed.stderr
    users = json.loads(listed.stdout)["users"]
    assert [u["username"] for u in users] == ["alice"]
    assert "password_hash" not in listed.stdout
    assert "$argon2" not in listed.stdout

    duplicate = run_cli(home, "auth", "add-user", "alice", "--password-stdin", input="other-pw\n")
    assert duplicate.returncode == 1
    assert "auth passwd" in duplicate.stderr
    assert credentials(home)["alice"] == first_hash  # nothing lost

    changed = run_cli(home, "auth", "passwd", "alice", "--password-stdin", input="pw-three-four\n")
    assert changed.returncode == 0, changed.stderr
    new_hash = credentials(home)["alice"]
    assert new_hash != first_hash
    assert new_hash.startswith("$argon2id$")
    assert verifies(new_hash, "pw-three-four")
    assert not verifies(new_hash, "pw-one-two")
    assert mode(path) == 0o600

    unknown = run_cli(home, "auth", "passwd", "nobody", "--password-stdin", input="x-y-z\n")
    assert unknown.returncode == 1
    assert "nobody" in unknown.stderr

    removed = run_cli(home, "auth", "remove-user", "alice")
    assert removed.returncode == 0, removed.stderr
    assert credentials(home) == {}
    assert json.loads(run_cli(home, "auth", "list-users", "--json").stdout)["users"] == []

    hashed = run_cli(home, "auth", "hash", "--password-stdin", input="hash-me-please\n")
    assert hashed.returncode == 0, hashed.stderr
    lines = hashed.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("$argon2id$")
    assert verifies(lines[0], "hash-me-please")


# -- login, query, logout ------------------------------------------------------------------------------------------


def test_login_query_logout(cli_server: ServerProcess, client_home: Path) -> None:
    url, origin = cli_server.url, cli_server.url
    result = login(client_home, cli_server, "--fingerprint", cli_server.fingerprint)
    assert result.returncode == 0, result.stderr
    assert PASSWORD not in result.stdout + result.stderr

    tokens, known = client_home / "tokens.json", client_home / "known_servers.json"
    assert mode(tokens) == 0o600
    assert mode(known) == 0o600
    assert json.loads(known.read_text())[origin] == cli_server.fingerprint
    token = json.loads(tokens.read_text())[origin]["token"]
    secret = (cli_server.home / "token_secret").read_text().strip()
    assert jwt.decode(token, secret, algorithms=["HS256"], issuer="specai")["sub"] == "alice"

    streamed = run_cli(client_home, "query", "hello", "--server", url)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip() == MOCK_REPLY
    match = SESSION_LINE.search(streamed.stderr)
    assert match, streamed.stderr
    session = match.group(1)

    whole = run_cli(client_home, "query", "and then?", "--server", url, "--no-stream", "--json", "--continue")
    assert whole.returncode == 0, whole.stderr
    body = json.loads(whole.stdout)
    assert {"response", "session_id", "agent", "metadata"} <= set(body)
    assert body["response"] == MOCK_REPLY
    assert body["agent"] == "default"
    assert body["metadata"]["model"] == "mock-model"
    assert body["session_id"] == session  # --continue reused the streamed session

    fresh = json.loads(
        run_cli(client_home, "query", "new topic", "--server", url, "--no-stream", "--json").stdout
    )
    assert str(uuid.UUID(fresh["session_id"])) == fresh["session_id"]
    assert fresh["session_id"] != session
    again = json.loads(run_cli(client_home, "query", "more", "--server", url, "--json", "--continue").stdout)
    assert again["session_id"] == fresh["session_id"]
    unknown = run_cli(client_home, "query", "x", "--server", url, "--json", "--session", "my-own-id")
    assert unknown.returncode == 1, unknown.stderr  # an unknown id is not silently a new session...
    assert unknown.stderr.strip() == (
        f"error: no session 'my-own-id' on {origin}; pass --new to start one with that id"
    )
    chosen = json.loads(
        run_cli(
            client_home, "query", "x", "--server", url, "--json", "--session", "my-own-id", "--new"
        ).stdout
    )
    assert chosen["session_id"] == "my-own-id"  # ... unless --new says so
    resumed = run_cli(client_home, "query", "y", "--server", url, "--json", "--session", "my-own-id")
    assert json.loads(resumed.stdout)["session_id"] == "my-own-id", resumed.stderr

    agents = run_cli(client_home, "agents", "--json", SPECAI_SERVER=url)  # server from the environment
    assert agents.returncode == 0, agents.stderr
    assert [agent["id"] for agent in json.loads(agents.stdout)["agents"]] == ["default"]
    health = run_cli(client_home, "health", "--server", url, "--json")
    assert health.returncode == 0, health.stderr
    assert json.loads(health.stdout)["status"] == "healthy"

    out = run_cli(client_home, "logout", "--server", url)
    assert out.returncode == 0, out.stderr
    assert origin not in json.loads(tokens.read_text())
    assert json.loads(known.read_text())[origin] == cli_server.fingerprint  # the pin stays
    denied = run_cli(client_home, "agents", "--server", url)
    assert denied.returncode == 4, (denied.returncode, denied.stderr)
    assert "login" in denied.stderr


def test_query_without_a_token_exits_4(cli_server: ServerProcess, client_home: Path) -> None:
    result = run_cli(
        client_home, "query", "hello", "--server", cli_server.url, "--fingerprint", cli_server.fingerprint
    )
    assert result.returncode == 4, (result.returncode, result.stderr)
    assert "login" in result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_password_at_login_exits_4(cli_server: ServerProcess, client_home: Path) -> None:
    result = login(
        client_home, cli_server, "--fingerprint", cli_server.fingerprint, password="not-the-password"
    )
    assert result.returncode == 4, (result.returncode, result.stderr)
    assert not (client_home / "tokens.json").exists()
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_wrong_fingerprint_exits_5(cli_server: ServerProcess, client_home: Path) -> None:
    result = login(client_home, cli_server, "--fingerprint", OTHER_FINGERPRINT)
    assert result.returncode == 5, (result.returncode, result.stderr)
    assert cli_server.fingerprint in result.stderr
    assert not (client_home / "tokens.json").exists()
    known = client_home / "known_servers.json"
    assert not known.exists() or cli_server.url not in json.loads(known.read_text())
    query = run_cli(client_home, "health", "--server", cli_server.url, "--fingerprint", OTHER_FINGERPRINT)
    assert query.returncode == 5


def test_unpinned_server_in_a_non_interactive_run_exits_5(
    cli_server: ServerProcess, client_home: Path
) -> None:
    for args in (("health",), ("login", "--username", "alice", "--password-stdin")):
        result = run_cli(client_home, *args, "--server", cli_server.url, input=PASSWORD + "\n")
        assert result.returncode == 5, (args, result.returncode, result.stderr)
        assert cli_server.fingerprint in result.stderr
        assert "--fingerprint" in result.stderr
    assert not (client_home / "known_servers.json").exists()  # nothing pinned silently
    assert not (client_home / "tokens.json").exists()


def test_pin_is_checked_before_the_password_is_sent(cli_server: ServerProcess, client_home: Path) -> None:
    """Six wrong-fingerprint logins with a WRONG password: had the password been sent, dave (max_failed_logins = 5)
    would now be locked out and the correct login below would get 429."""

    def attempt(_: int) -> int:
        return login(
            client_home, cli_server, "--fingerprint", OTHER_FINGERPRINT, user="dave", password="wrong!"
        ).returncode

    with ThreadPoolExecutor(max_workers=3) as pool:
        codes = list(pool.map(attempt, range(6)))
    assert codes == [5] * 6
    result = login(client_home, cli_server, "--fingerprint", cli_server.fingerprint, user="dave")
    assert result.returncode == 0, result.stderr


def test_nothing_is_sent_to_an_untrusted_server(tmp_path: Path, client_home: Path) -> None:
    recorder = RecordingTlsServer(tmp_path)
    try:
        for extra in (("--fingerprint", OTHER_FINGERPRINT), ()):
            result = run_cli(
                client_home,
                "login",
                "--server",
                recorder.url,
                "--username",
                "alice",
                "--password-stdin",
                *extra,
                input=PASSWORD + "\n",
            )
            assert result.returncode == 5, (result.returncode, result.stderr)
        assert recorder.handshakes >= 2
        assert recorder.raw == b""
        # control: once the pin matches, the request (with the password) does reach the server
        run_cli(
            client_home,
            "login",
            "--server",
            recorder.url,
            "--username",
            "alice",
            "--password-stdin",
            "--fingerprint",
            recorder.fingerprint,
            input=PASSWORD + "\n",
            timeout=30,
        )
        assert b"POST /auth/token" in recorder.raw
        assert PASSWORD.encode() in recorder.raw
    finally:
        recorder.close()


def test_replaced_certificate_is_refused(tmp_path: Path, client_home: Path) -> None:
    server_home = tmp_path / "server-home"
    server_home.mkdir(mode=0o700)
    first = ServerProcess(server_home).start()
    try:
        pinned = run_cli(client_home, "health", "--server", first.url, "--fingerprint", first.fingerprint)
        assert pinned.returncode == 0, pinned.stderr
        assert (
            run_cli(client_home, "query", "hi", "--server", first.url).returncode == 0
        )  # the stored pin works
    finally:
        first.stop()
    shutil.rmtree(server_home / "tls")
    second = ServerProcess(server_home, port=first.port).start()
    try:
        assert second.url == first.url
        assert second.fingerprint != first.fingerprint
        for args in (("health",), ("query", "hi"), ("agents",)):
            result = run_cli(client_home, *args, "--server", second.url)
            assert result.returncode == 5, (args, result.returncode, result.stderr)
            assert "changed" in result.stderr.lower(), result.stderr
            assert second.fingerprint in result.stderr
        known = json.loads((client_home / "known_servers.json").read_text())
        assert known[first.url] == first.fingerprint  # never silently re-pinned
        repinned = run_cli(client_home, "health", "--server", second.url, "--fingerprint", second.fingerprint)
        assert repinned.returncode == 0, repinned.stderr
    finally:
        second.stop()


# -- streaming -----------------------------------------------------------------------------------------------------


def test_query_streams_incrementally(home: Path, client_home: Path) -> None:
    (home / "spec-ai.config.toml").write_text("[model]\nmock_delay_ms = 300\n")  # 10 words, ~2.7 s
    proc = ServerProcess(home).start()
    try:
        started = time.monotonic()
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "specai",
                "query",
                "hello",
                "--server",
                proc.url,
                "--fingerprint",
                proc.fingerprint,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(client_home),
            cwd=client_home,
        )
        assert child.stdout is not None
        assert child.stderr is not None
        arrivals: list[tuple[float, bytes]] = []
        with child.stdout, child.stderr:
            while True:
                data = os.read(child.stdout.fileno(), 4096)
                if not data:
                    break
                arrivals.append((time.monotonic() - started, data))
            code = child.wait(30)
            total = time.monotonic() - started
            stderr = child.stderr.read().decode()
    finally:
        proc.stop()
    assert code == 0, stderr
    text = b"".join(data for _, data in arrivals).decode()
    assert text.strip() == MOCK_REPLY
    first = arrivals[0][0]
    assert first < total - 1.0, (first, total)
    assert len(arrivals) >= 3, arrivals  # several pieces, not one write at the end
    assert arrivals[-1][0] - first > 1.5, arrivals


# -- the interactive prompt in a real terminal ---------------------------------------------------------------------


def test_interactive_add_user_in_a_terminal(home: Path) -> None:
    secrets = ("Mismatch-one-111", "Mismatch-two-222", "Good-secret-999")
    term = Terminal(home, "auth", "add-user")
    try:
        term.expect("Username")
        term.type_line("bob")
        term.expect("Password")
        term.wait_echo_off()
        term.type_line(secrets[0])
        term.expect("Repeat password")
        term.wait_echo_off()
        term.type_line(secrets[1])
        term.expect("do not match")
        term.expect("Password")
        term.wait_echo_off()
        term.type_line("")  # empty: refused, asked again
        term.expect("must not be empty")
        term.expect("Password")
        term.wait_echo_off()
        term.type_line(secrets[2])
        term.expect("Repeat password")
        term.wait_echo_off()
        term.type_line(secrets[2])
        term.expect("added user 'bob'")
        code = term.finish()
    finally:
        term.close()
    assert code == 0, term.output
    for secret in secrets:
        assert secret.encode() not in term.output, term.output
    stored = credentials(home)
    assert list(stored) == ["bob"]
    assert stored["bob"].startswith("$argon2id$")
    assert verifies(stored["bob"], secrets[2])
    assert mode(home / "credentials.json") == 0o600


# -- basics --------------------------------------------------------------------------------------------------------


def test_version_and_help(home: Path) -> None:
    version = run_cli(home, "--version")
    assert version.returncode == 0
    assert re.fullmatch(r"specai \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout
    helped = run_cli(home, "--help")
    assert helped.returncode == 0
    for command in ("server", "auth", "cert", "login", "logout", "query", "agents", "health"):
        assert re.search(rf"^\s+{command}\s", helped.stdout, re.MULTILINE), (command, helped.stdout)


def test_plain_http_server_url_is_refused(home: Path) -> None:
    for args in (("query", "hello"), ("health",), ("login", "--username", "alice", "--password-stdin")):
        result = run_cli(home, *args, "--server", "http://127.0.0.1:3000", input=PASSWORD + "\n")
        assert result.returncode != 0
        assert "https" in result.stderr.lower(), (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
