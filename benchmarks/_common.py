"""Helpers the benchmark scripts share: free ports, child processes that always stop, a real `specai server`."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from specai.errors import SpecaiError
from specai.identity.tls import fetch_peer_cert, pinned_ssl_context

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 6.0

T = TypeVar("T")


class BenchError(Exception):
    """The run is void: a server did not start or answered wrongly."""


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server with its output in `log`; SIGTERM it (then kill) on the way out."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(
    proc: subprocess.Popen[bytes], log: Path, ready: Callable[[str], T | None], timeout: float = START_TIMEOUT
) -> T:
    """Poll `ready(log text)` until it returns a value; BenchError if the process exits or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        result = ready(log.read_text())
        if result is not None:
            return result
        time.sleep(0.1)
    raise BenchError(f"{proc.args!r} did not become ready within {timeout:.0f} s:\n{log.read_text()[-2000:]}")


def wait_ready(
    proc: subprocess.Popen[bytes],
    port: int,
    log: Path,
    marker: str | None = None,
    timeout: float = START_TIMEOUT,
) -> ssl.SSLContext:
    """Wait for `marker` in the log (if given) and a 200 from /health; return a context pinned to the server."""

    def pinned_if_healthy(text: str) -> ssl.SSLContext | None:
        if marker is not None and marker not in text:
            return None
        with contextlib.suppress(OSError, http.client.HTTPException, SpecaiError):
            ctx = pinned_ssl_context(fetch_peer_cert(HOST, port, timeout=2))
            ctx.set_alpn_protocols(["http/1.1"])  # what wrk and the built-in generators speak
            if call(port, ctx, "GET", "/health", {})[0] == 200:
                return ctx
        return None

    return wait_until(proc, log, pinned_if_healthy, timeout)


def call(
    port: int, ctx: ssl.SSLContext, method: str, path: str, headers: dict[str, str], body: str = ""
) -> tuple[int, bytes]:
    """One request on a fresh connection; return status and body."""
    conn = http.client.HTTPSConnection(HOST, port, context=ctx, timeout=30)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def specai_command() -> list[str]:
    exe = Path(sys.executable).with_name("specai")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "specai"]


def specai_env(home: Path, config: Path) -> dict[str, str]:
    """This environment without any SPECAI_* variable, pointed at a throwaway home and config file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPECAI_")}
    return env | {"SPECAI_HOME": str(home), "SPECAI_CONFIG": str(config)}


def launch_specai_server(
    env: dict[str, str],
    log: Path,
    stack: contextlib.ExitStack,
    args: Sequence[str] = (),
    timeout: float = START_TIMEOUT,
) -> tuple[int, ssl.SSLContext, subprocess.Popen[bytes]]:
    """Start `specai server [args]` on a free loopback port (stopped when `stack` closes); port, pin, process."""
    port = free_port()
    argv = [*specai_command(), "server", "--port", str(port), *args]
    proc = stack.enter_context(running(argv, env, log))
    ctx = wait_ready(proc, port, log, marker="listening", timeout=timeout)
    note(f"specai server ready on {HOST}:{port}")
    return port, ctx, proc


def start_specai_server(
    env: dict[str, str], log: Path, stack: contextlib.ExitStack
) -> tuple[int, ssl.SSLContext]:
    """Start `specai server` on a free loopback port (stopped when `stack` closes); return port and pin."""
    port, ctx, _ = launch_specai_server(env, log, stack)
    return port, ctx


def in_scratch(name: str, run: Callable[[Path, contextlib.ExitStack], T]) -> T | None:
    """Run a benchmark in a throwaway folder, stopping whatever it started; a failure is one line and None."""
    try:
        with tempfile.TemporaryDirectory(prefix="specai-bench-") as tmp, contextlib.ExitStack() as stack:
            return run(Path(tmp), stack)
    except (BenchError, subprocess.CalledProcessError, OSError) as exc:
        detail = f"\n{exc.stderr}" if isinstance(exc, subprocess.CalledProcessError) else ""
        note(f"{name}: {exc}{detail}")
        return None
