"""The CLI in a real terminal: trust-on-first-use prompts, live Markdown answers, Ctrl-C during a stream."""

from __future__ import annotations

import json
import os
import pty
import select
import sys
import time
from pathlib import Path

from helpers import ServerProcess, cli_env


def _run_in_pty(home: Path, trigger: bytes, answer: bytes, *args: str) -> tuple[int, str]:
    pid, fd = pty.fork()
    if pid == 0:  # child: the real CLI on a terminal
        os.execve(sys.executable, [sys.executable, "-m", "specai", *args], cli_env(home))
    output, sent, deadline = b"", False, time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(fd, 4096)
            except OSError:
                break
            if not data:
                break
            output += data
            if not sent and trigger in output:
                os.write(fd, answer)
                sent = True
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_unknown_server_prompt_refused_then_accepted(server: ServerProcess, home: Path) -> None:
    code, text = _run_in_pty(home, b"remember it?", b"n\r", "health", "--server", server.url)
    assert code == 5
    assert server.fingerprint in text
    assert not (home / "known_servers.json").exists()

    code, text = _run_in_pty(home, b"remember it?", b"y\r", "health", "--server", server.url)
    assert code == 0, text
    assert "healthy" in text
    assert json.loads((home / "known_servers.json").read_text()) == {server.url: server.fingerprint}
    assert (home / "known_servers.json").stat().st_mode & 0o777 == 0o600


def test_query_on_a_terminal_renders_live_and_ctrl_c_exits_130(home: Path) -> None:
    (home / "spec-ai.config.toml").write_text("[model]\nmock_delay_ms = 400\n")  # ~4 s per reply
    server = ServerProcess(home).start()
    try:
        args = ("query", "hello", "--server", server.url, "--fingerprint", server.fingerprint)
        code, text = _run_in_pty(home, b"mock", b"\x03", *args)
    finally:
        server.stop()
    assert code == 130
    assert "This is a mock" in text
    assert "provider." not in text  # stopped before the end of the reply
    assert "\x1b[" in text  # rendered for a terminal (Rich live display), not raw text
    assert "interrupted" in text and "Traceback" not in text
