"""Shared test helpers: run the real CLI, start a real `specai server` process, parse SSE, check error shapes."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

LISTENING = re.compile(r"listening on (https://\S+) fingerprint ([0-9A-F:]{95})")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: an isolated SPECAI_HOME, nothing inherited that could change behaviour."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECAI_")}
    env.update({"SPECAI_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200"})
    env.update(extra)
    return env


def run_cli(
    home: Path, *args: str, input: str | None = None, cwd: Path | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `python -m specai ARGS` as a real process (stdin is not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "specai", *args],
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        env=cli_env(home, **env),
        cwd=cwd or home,
        timeout=timeout,
    )


class ServerProcess:
    """A real `specai server` process on a free port; `start()` waits for its listening line."""

    def __init__(
        self, home: Path, *args: str, port: int | None = None, cwd: Path | None = None, **env: str
    ) -> None:
        self.home = home
        self.port = port or free_port()
        self.args = ["server", "--port", str(self.port), *args]
        self.cwd = cwd or home
        self.env = cli_env(home, **env)
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.url = ""
        self.fingerprint = ""

    def start(self, timeout: float = 20) -> ServerProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "specai", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"server exited {self.proc.returncode}: {self.text()}") from None
                continue
            if match := LISTENING.search(line):
                self.url, self.fingerprint = match.group(1), match.group(2)
                return self
        self.stop()
        raise RuntimeError(f"server did not start within {timeout} s: {self.text()}")

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self.output.append(line)
                self.lines.put(line)
        except ValueError:
            pass  # closed by close()

    def text(self) -> str:
        """Everything the server printed so far."""
        return "".join(self.output)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the process to end; returns its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        self.close()
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> float:
        """Send `sig` and return how many seconds the process took to exit (killed after `timeout`)."""
        if self.proc is None:
            return 0.0
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elapsed = time.monotonic() - started
        self.close()
        return elapsed

    def close(self) -> None:
        """Release the output pipe once the process has ended."""
        if self.proc is not None and self.proc.stdout is not None:
            time.sleep(0.05)  # let the pump thread read the last lines
            self.proc.stdout.close()

    def client(self, token: str | None = None) -> httpx.Client:
        """An httpx client that trusts exactly this server's certificate."""
        from specai.identity.tls import fetch_peer_cert, pinned_ssl_context

        der = fetch_peer_cert("127.0.0.1", self.port)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, verify=pinned_ssl_context(der), headers=headers, timeout=30)


def parse_sse(text: str) -> list[dict[str, Any]]:
    """Parse an SSE body into its events: {'id': ..., 'event': ..., 'data': <parsed JSON>}."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert the canonical error shape `{"error": str, "code": code, "details"?}` and return the body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["code"] == code, body
    assert isinstance(body["error"], str) and body["error"]
    assert set(body) <= {"error", "code", "details"}, body
    return body
