"""`specai token`, `whoami` and `servers` on the client's own files, and the usage errors every command that talks to
a server gives before connecting (CliRunner, no server: nothing here needs one)."""

from __future__ import annotations

import base64
import json
import socket
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from specai.cli import app
from specai.cli._duration import in_words
from specai.cli._lazy import LazyGroup
from specai.cli.account import API_KEY_PREFIX, unverified_claims
from specai.users.keys import KEY_PREFIX

ORIGIN = "https://127.0.0.1:3000"
OTHER = "https://10.0.0.5:4443"
FP_A = ":".join(["AA"] * 32)
FP_B = ":".join(["BB"] * 32)


def jwt_like(claims: dict[str, Any]) -> str:
    """A token shaped like specai's (header.payload.signature); the signature is junk: nothing here checks it."""
    segment = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{segment}.c2lnbmF0dXJl"


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh SPECAI_HOME for the CLI and none of the caller's SPECAI_* variables."""
    for name in ("SPECAI_SERVER", "SPECAI_TOKEN", "SPECAI_FINGERPRINT", "SPECAI_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("SPECAI_HOME", str(home))
    return home


def run(*args: str, stdin: str | None = None, **env: str) -> Any:
    return CliRunner().invoke(app, list(args), input=stdin, env=env or None)


def save(home: Path, name: str, value: Any) -> None:
    home.mkdir(mode=0o700, exist_ok=True)
    (home / name).write_text(json.dumps(value))


def one_error_line(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return str(lines[0])


# --- specai token -------------------------------------------------------------------------------------------------


def test_token_prints_only_the_saved_token(cli: Path) -> None:
    token = jwt_like({"sub": "alice"})
    save(
        cli,
        "tokens.json",
        {ORIGIN: {"token": token, "username": "alice", "expires_at": int(time.time()) + 60}},
    )
    result = run("token")
    assert result.exit_code == 0, result.output
    assert result.stdout == token + "\n"
    assert result.stderr == ""


def test_token_is_per_server_from_the_option_or_the_environment(cli: Path) -> None:
    later = int(time.time()) + 600
    save(cli, "tokens.json", {ORIGIN: {"token": "t-one", "expires_at": later}, OTHER: {"token": "t-two"}})
    assert run("token", "--server", "10.0.0.5:4443").stdout == "t-two\n"
    assert run("token", SPECAI_SERVER=OTHER).stdout == "t-two\n"
    assert run("token", "--server", "https://127.0.0.1").stdout == "t-one\n"  # 3000 is the default port


def test_token_without_a_login_exits_4_with_the_fix(cli: Path) -> None:
    result = run("token", "--server", OTHER)
    assert result.exit_code == 4
    assert result.stdout == ""
    assert one_error_line(result) == f"error: not logged in to {OTHER}: run specai login --server {OTHER}"


def test_an_expired_token_is_not_printed(cli: Path) -> None:
    save(
        cli,
        "tokens.json",
        {ORIGIN: {"token": "old", "username": "alice", "expires_at": int(time.time()) - 5}},
    )
    result = run("token")
    assert result.exit_code == 4
    assert result.stdout == ""
    line = one_error_line(result)
    assert f"the token for {ORIGIN} expired at" in line
    assert line.endswith(f"run specai login --server {ORIGIN}")


def test_specai_token_wins_as_it_is_what_commands_send(cli: Path) -> None:
    save(cli, "tokens.json", {ORIGIN: {"token": "saved", "expires_at": int(time.time()) + 60}})
    assert run("token", SPECAI_TOKEN="from-env").stdout == "from-env\n"
    assert run("token", "--server", OTHER, SPECAI_TOKEN="from-env").stdout == "from-env\n"
    assert "SPECAI_TOKEN" in run("token", "--help").stdout


# --- specai whoami ------------------------------------------------------------------------------------------------


def closed_origin() -> str:
    """An https origin on loopback where nothing listens (the connection is refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"https://127.0.0.1:{port}"


def test_whoami_shows_what_the_login_saved_when_the_server_cannot_be_asked(cli: Path) -> None:
    origin = closed_origin()
    expires = int(time.time()) + 7200
    save(
        cli,
        "tokens.json",
        {
            origin: {
                "token": jwt_like({"sub": "alice", "exp": expires}),
                "username": "alice",
                "expires_at": expires,
            }
        },
    )
    save(cli, "known_servers.json", {origin: FP_A})
    shown = run("whoami", "--json", "--server", origin)
    assert shown.exit_code == 1, shown.output
    assert json.loads(shown.stdout) == {
        "server": origin,
        "token_source": "tokens.json",
        "token_kind": "login",
        "username": "alice",
        "role": None,
        "scope": None,
        "verified": False,
        "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
        "expired": False,
        "fingerprint": FP_A,
    }
    line = one_error_line(shown)
    assert line.startswith(f"error: could not ask {origin} (showing what is saved here): ")
    assert "refused" in line
    text = run("whoami", "--server", origin).stdout
    assert f"server       {origin}" in text
    assert "user         alice" in text
    assert f"fingerprint  {FP_A}" in text
    assert "(in 1 h 59 min)" in text or "(in 2 h)" in text
    assert "role         not known (the server was not asked)" in text


def test_whoami_never_takes_a_role_from_the_token(cli: Path) -> None:
    origin = closed_origin()
    save(cli, "known_servers.json", {origin: FP_A})
    token = jwt_like({"sub": "bob", "role": "admin", "exp": int(time.time()) + 60})
    result = run("whoami", "--server", origin, "--json", SPECAI_TOKEN=token)
    assert result.exit_code == 1, result.output
    facts = json.loads(result.stdout)
    assert (facts["username"], facts["role"], facts["token_source"]) == ("bob", None, "SPECAI_TOKEN")


def test_whoami_with_an_api_key_says_what_it_cannot_know(cli: Path) -> None:
    assert API_KEY_PREFIX == KEY_PREFIX  # kept apart so whoami loads no database code
    origin = closed_origin()
    save(cli, "known_servers.json", {origin: FP_A})
    answer = run("whoami", "--json", "--server", origin, SPECAI_TOKEN="spk_0123456789abcdef_" + "x" * 43)
    facts = json.loads(answer.stdout)
    assert (facts["token_kind"], facts["username"], facts["expires_at"], facts["expired"]) == (
        "api_key",
        None,
        None,
        False,
    )


def test_whoami_not_logged_in_exits_4(cli: Path) -> None:
    result = run("whoami", "--server", OTHER)
    assert result.exit_code == 4
    assert result.stdout == ""
    assert one_error_line(result) == f"error: not logged in to {OTHER}: run specai login --server {OTHER}"


def test_whoami_with_an_expired_token_shows_it_then_exits_4(cli: Path) -> None:
    save(
        cli, "tokens.json", {ORIGIN: {"token": "t", "username": "alice", "expires_at": int(time.time()) - 90}}
    )
    result = run("whoami", "--json")
    assert result.exit_code == 4
    assert json.loads(result.stdout)["expired"] is True
    assert "expired at" in one_error_line(result)
    assert "EXPIRED 1 min" in run("whoami").stdout


def test_unverified_claims_reads_a_payload_and_nothing_else() -> None:
    assert unverified_claims(jwt_like({"sub": "a"})) == {"sub": "a"}
    for junk in ("", "spk_x", "a.b", "a.!!!.c", "a." + base64.urlsafe_b64encode(b"[1]").decode() + ".c"):
        assert unverified_claims(junk) == {}


# --- specai servers -----------------------------------------------------------------------------------------------


def test_servers_lists_pins_and_logins(cli: Path) -> None:
    expires = int(time.time()) + 3600
    save(cli, "known_servers.json", {ORIGIN: FP_A, OTHER: FP_B})
    save(
        cli,
        "tokens.json",
        {OTHER: {"token": "t", "username": "bob", "expires_at": expires}, "https://lost:1": {"token": "u"}},
    )
    listed = run("servers", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)["servers"]
    assert [row["origin"] for row in rows] == [ORIGIN, OTHER, "https://lost:1"]
    assert rows[0] == {
        "origin": ORIGIN,
        "fingerprint": FP_A,
        "logged_in": False,
        "username": None,
        "expires_at": None,
        "expired": False,
    }
    assert (rows[1]["fingerprint"], rows[1]["username"], rows[1]["expired"]) == (FP_B, "bob", False)
    assert (rows[2]["fingerprint"], rows[2]["logged_in"]) == (None, True)
    text = run("servers").stdout
    assert f"{OTHER}\n  fingerprint  {FP_B}\n  login        bob, token until " in text
    assert f"{ORIGIN}\n  fingerprint  {FP_A}\n  login        none\n" in text


def test_servers_with_nothing_pinned(cli: Path) -> None:
    assert json.loads(run("servers", "--json").stdout) == {"servers": []}
    result = run("servers")
    assert result.exit_code == 0
    assert "no pinned servers yet" in result.stdout
    assert not cli.exists()  # listing writes nothing


def test_forget_removes_the_pin_token_and_last_session(cli: Path) -> None:
    save(cli, "known_servers.json", {ORIGIN: FP_A, OTHER: FP_B})
    save(cli, "tokens.json", {OTHER: {"token": "t", "username": "bob"}, ORIGIN: {"token": "keep"}})
    save(cli, "last_sessions.json", {OTHER: "s-1", ORIGIN: "s-2"})
    result = run("servers", "forget", "10.0.0.5:4443")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == (
        f"forgot {OTHER}: its pin ({FP_B}) and the saved token of bob (forgotten here only, not revoked on the server)"
    )
    assert json.loads((cli / "known_servers.json").read_text()) == {ORIGIN: FP_A}
    assert json.loads((cli / "tokens.json").read_text()) == {ORIGIN: {"token": "keep"}}
    assert json.loads((cli / "last_sessions.json").read_text()) == {ORIGIN: "s-2"}
    for name in ("known_servers.json", "tokens.json", "last_sessions.json"):
        assert stat.S_IMODE((cli / name).stat().st_mode) == 0o600

    again = run("servers", "forget", OTHER)
    assert again.exit_code == 1
    assert one_error_line(again) == (
        f"error: nothing to forget: {OTHER} is not pinned and no token is saved for it (`specai servers` lists them)"
    )
    only_pin = run("servers", "forget", ORIGIN)
    assert only_pin.stdout.strip().startswith(f"forgot {ORIGIN}: its pin ({FP_A}) and the saved token")


def test_forget_a_malformed_url_is_a_usage_error(cli: Path) -> None:
    result = run("servers", "forget", "ftp://x")
    assert result.exit_code == 2
    assert (
        one_error_line(result)
        == "error: URL: specai servers speak HTTPS only; use https:// instead of ftp://"
    )


# --- usage errors before anything connects ------------------------------------------------------------------------

COMMANDS_WITH_SERVER = [
    ("health",),
    ("agents",),
    ("query", "hi"),
    ("login", "--username", "a", "--password-stdin"),
    ("logout",),
    ("token",),
    ("whoami",),
    ("sessions", "list"),
    ("auth", "token", "list"),
    ("mesh", "members"),
    ("cert", "show"),
    ("cert", "pem"),
]


@pytest.mark.parametrize("args", COMMANDS_WITH_SERVER, ids=" ".join)
@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://x", "HTTPS only"),
        ("https://", "is not a server URL"),
        ("https://h:99999", "invalid port"),
        ("https://h:port", "invalid port"),
    ],
)
def test_a_malformed_server_url_is_a_usage_error(
    cli: Path, args: tuple[str, ...], url: str, problem: str
) -> None:
    result = run(*args, "--server", url, stdin="pw\n")
    assert result.exit_code == 2, (result.exit_code, result.output)
    line = one_error_line(result)
    assert problem in line
    assert line.startswith("error: --server: ")


def test_a_malformed_server_from_the_environment_names_the_variable(cli: Path) -> None:
    result = run("health", SPECAI_SERVER="http://127.0.0.1:3000")
    assert result.exit_code == 2
    assert one_error_line(result).startswith("error: SPECAI_SERVER: specai servers speak HTTPS only")


@pytest.mark.parametrize(
    "args", [a for a in COMMANDS_WITH_SERVER if a[0] not in ("token", "whoami", "cert")], ids=" ".join
)
def test_a_malformed_fingerprint_is_a_usage_error(cli: Path, args: tuple[str, ...]) -> None:
    for value in ("AA:BB", "zz" * 32, FP_A + ":CC"):
        result = run(*args, "--fingerprint", value, stdin="pw\n")
        assert result.exit_code == 2, (args, value, result.output)
        assert one_error_line(result).startswith(
            f"error: --fingerprint: '{value}' is not a SHA-256 fingerprint"
        )
    from_env = run(*args, stdin="pw\n", SPECAI_FINGERPRINT="nope")
    assert from_env.exit_code == 2
    assert one_error_line(from_env).startswith(
        "error: SPECAI_FINGERPRINT: 'nope' is not a SHA-256 fingerprint"
    )


def test_every_server_and_fingerprint_option_is_checked() -> None:
    """Every command's `--server`/`--fingerprint`, wherever it is, refuses a malformed value as a usage error
    (its callback, run as click runs it on parsing, exits 2) and lets a good one through."""
    import typer.main

    bad = {"--server": "ftp://x", "--fingerprint": "AA:BB"}
    good = {"--server": "https://127.0.0.1:3000", "--fingerprint": FP_A}
    unchecked: list[str] = []
    checked: list[str] = []

    def refuses(command: Any, param: Any, value: str) -> bool:
        if param.callback is None:
            return False
        try:
            param.callback(command.context_class(command), param, value)
        except click_exit_types() as exc:
            return getattr(exc, "exit_code", None) == 2
        return False

    def walk(command: Any, path: str, ctx: Any) -> None:
        if isinstance(command, LazyGroup) or hasattr(command, "commands"):
            for name in list(command.commands):
                walk(command.get_command(ctx, name), f"{path} {name}", ctx)
            return
        for param in command.params:
            for opt in set(bad) & set(getattr(param, "opts", ())):
                ok = (
                    refuses(command, param, bad[opt])
                    and param.callback(command.context_class(command), param, good[opt]) == good[opt]
                )
                (checked if ok else unchecked).append(f"{path} {opt}")

    root = typer.main.get_command(app)
    walk(root, "specai", root.context_class(root))
    assert unchecked == []
    assert {"specai health --server", "specai query --fingerprint", "specai cert pem --fingerprint"} <= set(
        checked
    )
    assert len(checked) > 40, checked


def click_exit_types() -> tuple[type[BaseException], ...]:
    """The Exit of every click in play (Typer may bundle its own)."""
    import click
    import typer

    return (click.exceptions.Exit, typer.Exit, SystemExit)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--temperature", "2.5"), "error: --temperature must be from 0 to 2 (got 2.5)"),
        (("--temperature", "-0.1"), "error: --temperature must be from 0 to 2 (got -0.1)"),
        (("--max-tokens", "0"), "error: --max-tokens must be 1 or more (got 0)"),
        (("--new",), "error: --new needs --session ID"),
        (("--session", "s", "--continue"), "error: --session and --continue are alternatives: give one"),
    ],
)
def test_query_options_out_of_range_are_usage_errors(cli: Path, args: tuple[str, ...], message: str) -> None:
    result = run("query", "hi", *args, "--server", "https://127.0.0.1:9")  # nothing listens: never reached
    assert result.exit_code == 2, result.output
    assert one_error_line(result).startswith(message)


@pytest.mark.parametrize("stdin", ["", "\n", "  \n\n"])
def test_query_dash_with_nothing_on_stdin_is_a_usage_error(cli: Path, stdin: str) -> None:
    result = run("query", "-", "--server", "https://127.0.0.1:9", stdin=stdin)
    assert result.exit_code == 2, result.output
    assert one_error_line(result).startswith("error: the message on stdin is empty")


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "0 s"),
        (0.2, "1 s"),
        (45, "45 s"),
        (60, "1 min"),
        (250, "4 min 10 s"),
        (3601, "1 h"),
        (3661, "1 h 1 min"),
        (86400, "1 day"),
        (180030, "2 days 2 h"),
    ],
)
def test_durations_in_words(seconds: float, words: str) -> None:
    assert in_words(seconds) == words
