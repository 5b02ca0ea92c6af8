"""`specai a2a` and `specai query --a2a` options and error paths, in-process: one line and a named exit code each."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from specai.cli import app
from specai.cli._console import ERROR, USAGE


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("SPECAI_HOME", str(tmp_path))
    for name in ("SPECAI_TOKEN", "SPECAI_SERVER", "SPECAI_FINGERPRINT"):
        monkeypatch.delenv(name, raising=False)
    return {"SPECAI_HOME": str(tmp_path)}


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_help_lists_the_commands_with_examples(env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["a2a", "--help"])
    assert result.exit_code == 0, result.output
    assert "card" in result.output
    assert "send" in result.output
    send = CliRunner().invoke(app, ["a2a", "send", "--help"])
    assert send.exit_code == 0
    assert "specai a2a send https://" in send.output
    assert "--context" in send.output
    assert "--no-stream" in send.output


@pytest.mark.parametrize(
    "args",
    [
        ["a2a", "send", "http://127.0.0.1:3000", "hi"],
        ["a2a", "card", "--server", "http://127.0.0.1:3000"],
        ["query", "--a2a", "http://127.0.0.1:3000", "hi"],
        ["a2a", "send", "ftp://agent.example", "hi"],
    ],
)
def test_plain_http_is_a_usage_error(env: dict[str, str], args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == USAGE, result.output
    assert "https" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--session", "s-1"),
        ("--system", "be brief"),
        ("--temperature", "0.5"),
        ("--max-tokens", "10"),
    ],
)
def test_query_a2a_refuses_specai_only_options(env: dict[str, str], option: str, value: str) -> None:
    result = CliRunner().invoke(app, ["query", "--a2a", "https://127.0.0.1:3000", "hi", option, value])
    assert result.exit_code == USAGE, result.output
    assert f"{option} cannot be used with --a2a" in result.output


def test_query_a2a_continue_is_refused(env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["query", "--a2a", "https://127.0.0.1:3000", "hi", "--continue"])
    assert result.exit_code == USAGE
    assert "--continue cannot be used with --a2a" in result.output


def test_empty_stdin_message_is_a_usage_error(env: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["a2a", "send", "https://127.0.0.1:3000", "-"], input="\n")
    assert result.exit_code == USAGE, result.output
    assert "the message on stdin is empty" in result.output


def test_bad_fingerprint_is_a_usage_error(env: dict[str, str]) -> None:
    result = CliRunner().invoke(
        app, ["a2a", "card", "--server", "https://127.0.0.1:3000", "--fingerprint", "not-a-fingerprint"]
    )
    assert result.exit_code == USAGE, result.output
    assert "--fingerprint" in result.output


@pytest.mark.parametrize("command", [["a2a", "card", "--server"], ["a2a", "send"], ["query", "--a2a"]])
def test_unreachable_agent_is_one_line_and_exit_1(env: dict[str, str], command: list[str]) -> None:
    url = f"https://127.0.0.1:{_closed_port()}"
    args = [*command, url] + ([] if command[-1] == "--server" else ["hi"])
    result = CliRunner().invoke(app, args)
    assert result.exit_code == ERROR, result.output
    assert "Traceback" not in result.output
    assert f"127.0.0.1:{url.rsplit(':', 1)[1]}" in result.output
