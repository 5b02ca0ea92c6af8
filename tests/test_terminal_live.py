"""The CLI in a real terminal: trust-on-first-use prompts, live Markdown answers, Ctrl-C during a stream."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from live import ServerProcess, Terminal

pytestmark = pytest.mark.live


def _answer_in_terminal(home: Path, trigger: str, answer: bytes, *args: str) -> tuple[int, str]:
    """Run the CLI on a terminal, type `answer` once `trigger` shows; its exit code and everything it showed."""
    with Terminal(home, *args) as term:
        term.expect(trigger)
        term.type(answer)
        code = term.finish()
    return code, term.text()


def test_unknown_server_prompt_refused_then_accepted(server: ServerProcess, home: Path) -> None:
    code, text = _answer_in_terminal(home, "remember it?", b"n\r", "health", "--server", server.url)
    assert code == 5
    assert server.fingerprint in text
    assert not (home / "known_servers.json").exists()

    code, text = _answer_in_terminal(home, "remember it?", b"y\r", "health", "--server", server.url)
    assert code == 0, text
    assert "healthy" in text
    assert json.loads((home / "known_servers.json").read_text()) == {server.url: server.fingerprint}
    assert (home / "known_servers.json").stat().st_mode & 0o777 == 0o600


def test_query_on_a_terminal_renders_live_and_ctrl_c_exits_130(home: Path) -> None:
    (home / "spec-ai.config.toml").write_text("[model]\nmock_delay_ms = 400\n")  # ~4 s per reply
    server = ServerProcess(home).start()
    try:
        args = ("query", "hello", "--server", server.url, "--fingerprint", server.fingerprint)
        code, text = _answer_in_terminal(home, "mock", b"\x03", *args)
    finally:
        server.stop()
    assert code == 130
    assert "This is a mock" in text
    assert "provider." not in text  # stopped before the end of the reply
    assert "\x1b[" in text  # rendered for a terminal (Rich live display), not raw text
    assert "interrupted" in text
    assert "Traceback" not in text
