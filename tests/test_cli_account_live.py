"""The real `specai` CLI against a real server: login -> token -> whoami -> servers -> servers forget; query with `-`
from stdin, --system and --max-tokens; --session that must exist unless --new; a login lockout is exit 4."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from live import PASSWORD, CliProcess, ServerProcess, add_user, cli_login, make_home, run_cli

pytestmark = pytest.mark.live

MOCK_REPLY = "This is a mock response from the test provider."


@pytest.fixture(scope="module")
def account_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Auth enabled; alice for the tour, carol to be locked out (two failed logins lock an account)."""
    home = make_home(tmp_path_factory.mktemp("account-server"))
    for name in ("alice", "carol"):
        add_user(home, name)
    (home / "spec-ai.config.toml").write_text("[auth]\nenabled = true\nmax_failed_logins = 2\n")
    proc = ServerProcess(home).start()
    yield proc
    proc.stop()


def test_login_token_whoami_servers_forget(account_server: ServerProcess, client_home: Path) -> None:
    url = account_server.url
    cli_login(client_home, account_server)

    printed = run_cli(client_home, "token", SPECAI_SERVER=url)
    assert printed.returncode == 0, printed.stderr
    token = printed.stdout.removesuffix("\n")
    assert printed.stdout == token + "\n"  # only the token, for $(specai token)
    assert token == json.loads((client_home / "tokens.json").read_text())[url]["token"]
    with account_server.client(token) as other_tool:  # what another tool does with it
        assert other_tool.get("/agents").status_code == 200

    who = run_cli(client_home, "whoami", "--server", url, "--json")
    assert who.returncode == 0, who.stderr
    facts = json.loads(who.stdout)
    assert (facts["server"], facts["username"], facts["fingerprint"]) == (
        url,
        "alice",
        account_server.fingerprint,
    )
    assert (facts["token_kind"], facts["expired"]) == ("login", False)
    assert (facts["role"], facts["scope"], facts["verified"]) == (
        "admin",
        "admin",
        True,
    )  # the server's answer
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", facts["expires_at"])
    shown = run_cli(client_home, "whoami", "--server", url).stdout
    assert "user         alice" in shown
    assert "(in 23 h 59 min)" in shown or "(in 1 day)" in shown  # the server's default: a day
    assert "role         admin (token scope admin)" in shown
    rejected = run_cli(client_home, "whoami", "--server", url, SPECAI_TOKEN=token[:-4] + "AAAA")
    assert rejected.returncode == 4, rejected.stderr  # a token the server does not honour
    assert "expired or not honoured by the server" in rejected.stderr

    listed = run_cli(client_home, "servers", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)["servers"]
    assert (row["origin"], row["fingerprint"], row["username"], row["logged_in"]) == (
        url,
        account_server.fingerprint,
        "alice",
        True,
    )

    forgot = run_cli(client_home, "servers", "forget", url)
    assert forgot.returncode == 0, forgot.stderr
    assert account_server.fingerprint in forgot.stdout
    assert "the saved token of alice" in forgot.stdout
    assert json.loads(run_cli(client_home, "servers", "--json").stdout) == {"servers": []}
    for args in (("token",), ("whoami",)):
        gone = run_cli(client_home, *args, "--server", url)
        assert gone.returncode == 4, (args, gone.stderr)
        assert gone.stderr.strip() == f"error: not logged in to {url}: run specai login --server {url}"
    unpinned = run_cli(client_home, "health", "--server", url)
    assert unpinned.returncode == 5, unpinned.stderr  # the pin is gone too: trust is asked for again
    again = run_cli(client_home, "servers", "forget", url)
    assert again.returncode == 1
    assert "nothing to forget" in again.stderr


def test_query_from_stdin_with_system_and_max_tokens(
    account_server: ServerProcess, client_home: Path
) -> None:
    cli_login(client_home, account_server)
    url = account_server.url

    def ask(*args: str, stdin: str) -> dict[str, object]:
        result = run_cli(client_home, "query", "-", "--server", url, "--json", *args, input=stdin)
        assert result.returncode == 0, result.stderr
        body: dict[str, object] = json.loads(result.stdout)
        return body

    message = "first line\nsecond line\n"
    plain = ask(stdin=message)
    assert plain["response"] == MOCK_REPLY
    with_system = ask("--system", "answer in exactly five words please", "--max-tokens", "3", stdin=message)
    assert with_system["response"] == "This is a"  # the mock counts words as tokens: cut at three
    plain_usage, usage = plain["metadata"]["usage"], with_system["metadata"]["usage"]  # type: ignore[index]
    assert usage["completion_tokens"] == 3
    assert usage["prompt_tokens"] - plain_usage["prompt_tokens"] == 6  # the six words of --system reached it

    token = json.loads((client_home / "tokens.json").read_text())[url]["token"]
    with account_server.client(token) as http:
        stored = http.get(f"/sessions/{plain['session_id']}").json()["messages"]
    assert stored[0] == {
        **stored[0],
        "role": "user",
        "content": "first line\nsecond line",
    }  # all, but the last \n

    streamed = run_cli(client_home, "query", "-", "--server", url, "--temperature", "0.5", input="hi\n")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip() == MOCK_REPLY


def test_session_must_exist_unless_new(account_server: ServerProcess, client_home: Path) -> None:
    cli_login(client_home, account_server)
    url = account_server.url
    missing = run_cli(client_home, "query", "hi", "--server", url, "--session", "notes-7")
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        == f"error: no session 'notes-7' on {url}; pass --new to start one with that id"
    )
    assert missing.stdout == ""

    started = run_cli(client_home, "query", "hi", "--server", url, "--session", "notes-7", "--new", "--json")
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["session_id"] == "notes-7"
    twice = run_cli(client_home, "query", "hi", "--server", url, "--session", "notes-7", "--new")
    assert twice.returncode == 1
    assert (
        twice.stderr.strip() == f"error: session 'notes-7' already exists on {url}; drop --new to continue it"
    )

    with CliProcess(client_home, "query", "more", "--server", url, "--session", "notes-7") as resumed:
        assert resumed.stdout.expect(lambda line: MOCK_REPLY in line)
        assert resumed.proc.wait(timeout=30) == 0
    continued = run_cli(client_home, "query", "and?", "--server", url, "--continue", "--json")
    assert json.loads(continued.stdout)["session_id"] == "notes-7", continued.stderr  # --continue still works


def test_a_login_lockout_exits_4_with_the_wait_in_words(
    account_server: ServerProcess, client_home: Path
) -> None:
    for _ in range(2):
        result = run_cli(
            client_home,
            "login",
            "--server",
            account_server.url,
            "-u",
            "carol",
            "--password-stdin",
            "--fingerprint",
            account_server.fingerprint,
            input="not-her-password\n",
        )
        assert result.returncode == 4
    locked = run_cli(
        client_home,
        "login",
        "--server",
        account_server.url,
        "-u",
        "carol",
        "--password-stdin",
        input=PASSWORD + "\n",  # even the right password: the account is locked for now
    )
    assert locked.returncode == 4, locked.stderr
    line = locked.stderr.strip()
    assert re.fullmatch(
        rf"error: {re.escape(account_server.url)} refuses logins for now after too many failed attempts: "
        r"try again in \d+ (s|min( \d+ s)?)",
        line,
    ), line
    assert not (client_home / "tokens.json").exists()
