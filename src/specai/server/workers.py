"""`specai server --workers N`: N server processes on one port, started and kept running by the CLI's process.

Why this shape. Each worker is a whole specai server in a process of its own (its app, event loop, store pool and
LISTEN connection), so a crash or a `kill -9` takes one worker down, never the service; what they must agree on
lives in PostgreSQL. The parent is the CLI process that did every check once (config, certificate, port,
database, connection budget) and holds the home lock; it starts each worker as a fresh interpreter
(`python -m specai.server.workers`, the resolved settings pickled on its stdin) rather than a fork, so no event
loop, pool or thread is inherited half-alive, and a restart is the same path as the first start. The workers
inherit the lock files, so the home stays locked until the last of them is gone, and get SIGTERM if the parent
dies (PR_SET_PDEATHSIG), so none outlives it. Each worker binds the port itself with SO_REUSEPORT (granian's
listener does, as granian's own multi-process server does on Linux): the kernel spreads new connections over the
workers' sockets, and a dead worker's socket leaves the group at once. What that costs: connections queued on a
killed worker's socket and not yet accepted are reset (`net.ipv4.tcp_migrate_req=1` makes the kernel hand them
to a sibling instead); requests in flight on it fail, as they would with any design.

The parent prints the listening line once every worker has answered `/health` itself, forwards SIGINT/SIGTERM
and exits within 5 s, restarts a worker that died (after a short backoff, logged), and gives up with the reason
when a worker fails to start MAX_START_FAILURES times in a row while the service is starting or no worker serves.
A worker tells the parent what happens on a pipe of its own, one JSON object per line: `{"ready": url}`,
`{"announce": text}` (printed once, however many workers say it), `{"error": text, "kind": ...}` before it exits.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import IO

from specai.config import Settings
from specai.errors import AuthError, SpecaiError, StartupError, TrustError
from specai.identity.tls import CertInfo, CertPaths

MAX_START_FAILURES = 3  # failed starts in a row that end the service (while starting, or none serves)
START_TIMEOUT = 60.0  # a worker that has not answered by then counts as failed to start
RESTART_MIN_SECS = 0.5
RESTART_MAX_SECS = 10.0
STABLE_SECS = 10.0  # a worker that served this long restarts after the shortest backoff
STOP_SECS = 4.5  # after SIGINT/SIGTERM, workers still running are killed (each exits by itself by then)
ANNOUNCE_DEDUP_SECS = 60.0
_PR_SET_PDEATHSIG = 1
_EXIT = {"startup": 3, "auth": 4, "trust": 5, "crash": 1}
log = logging.getLogger("specai.server")


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to serve: the settings the parent resolved, and the certificate it checked."""

    settings: Settings
    cert: CertPaths
    info: CertInfo


@dataclass
class _Worker:
    index: int  # 1-based, as shown to the operator
    proc: subprocess.Popen[bytes] | None = None
    status: int | None = None  # the read end of its status pipe
    buffer: bytes = b""
    started: float = 0.0
    ready_at: float | None = None
    failures: int = 0  # failed starts in a row
    streak: int = 0  # exits in a row, for the backoff
    restart_at: float | None = None
    error: tuple[str, str] | None = None  # (kind, message) it reported before exiting


class Supervisor:
    """Start `count` workers, keep them running, stop them on SIGINT/SIGTERM; `run` returns once all are gone."""

    def __init__(
        self,
        spec: WorkerSpec,
        count: int,
        keep_fds: tuple[int, ...],
        on_ready: Callable[[str], None],
        announce: Callable[[str], None],
        notice: Callable[[str], None],
    ) -> None:
        self.spec = spec
        self.keep_fds = keep_fds
        self.on_ready = on_ready
        self.announce = announce
        self.notice = notice
        self.workers = [_Worker(index) for index in range(1, count + 1)]
        self._payload = pickle.dumps(spec)
        self._stopping = False
        self._stop_at: float | None = None  # when SIGINT/SIGTERM came
        self._url: str | None = None
        self._announced = False
        self._said: dict[str, float] = {}
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)

    def run(self) -> None:
        """Serve until SIGINT/SIGTERM (returns), or raise why the workers cannot serve (StartupError, or the
        TrustError/AuthError of a refused `--join`)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for worker in self.workers:
                self._spawn(worker)
            while not self._stopping:
                self._step()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(self._wake_r)
            os.close(self._wake_w)

    # --- the loop ---------------------------------------------------------------------------------------------

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        if self._stop_at is None:
            self._stop_at = time.monotonic()
            self._terminate()  # at once: the 5 s run from the signal, not from when the loop next looks
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _terminate(self) -> None:
        for worker in self.workers:
            if worker.proc is not None and worker.proc.returncode is None:  # not reaped: the pid is still its
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.proc.pid, signal.SIGTERM)

    def _step(self) -> None:
        now = time.monotonic()
        timers = [w.restart_at for w in self.workers if w.restart_at is not None]
        timers += [w.started + START_TIMEOUT for w in self.workers if w.proc and w.ready_at is None]
        timeout = min([1.0, *(max(0.0, t - now) for t in timers)])
        watched = [w.status for w in self.workers if w.status is not None]
        readable, _, _ = select.select([self._wake_r, *watched], [], [], timeout)
        if self._wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)
        if self._stopping:
            return
        now = time.monotonic()
        for worker in self.workers:
            if worker.status is not None and worker.status in readable:
                self._read(worker)
            if worker.proc is not None and (worker.status is None or worker.proc.poll() is not None):
                self._exited(worker, now)
            elif worker.proc is not None and worker.ready_at is None and now > worker.started + START_TIMEOUT:
                worker.error = ("startup", f"it did not answer within {START_TIMEOUT:.0f} s")
                worker.proc.kill()
            if worker.restart_at is not None and now >= worker.restart_at:
                self._spawn(worker)
        if not self._announced and self._url and all(w.ready_at is not None for w in self.workers):
            self._announced = True
            self.on_ready(self._url)

    def _spawn(self, worker: _Worker) -> None:
        worker.restart_at = None
        worker.ready_at = None
        worker.error = None
        worker.buffer = b""
        read_end, write_end = os.pipe()
        argv = [sys.executable, "-m", "specai.server.workers", "--status-fd", str(write_end)]
        argv += ["--parent", str(os.getpid()), "--worker", f"{worker.index}/{len(self.workers)}"]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, pass_fds=(write_end, *self.keep_fds))
        except OSError as exc:
            os.close(read_end)
            raise StartupError(f"cannot start server worker {worker.index}: {exc.strerror or exc}") from None
        finally:
            os.close(write_end)
        worker.proc, worker.status, worker.started = proc, read_end, time.monotonic()
        assert proc.stdin is not None
        # A few KB, but a config with long prompts may not fit the pipe's buffer: never block the loop on it.
        threading.Thread(target=_feed, args=(proc.stdin, self._payload), daemon=True).start()

    def _read(self, worker: _Worker) -> None:
        assert worker.status is not None
        chunk = os.read(worker.status, 65536)
        if not chunk:  # the worker is gone (or going)
            os.close(worker.status)
            worker.status = None
        worker.buffer += chunk
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for line in lines:
            with contextlib.suppress(ValueError):
                self._heard(worker, json.loads(line))

    def _heard(self, worker: _Worker, message: dict[str, str]) -> None:
        if "ready" in message:
            worker.ready_at = time.monotonic()
            worker.failures = 0
            self._url = self._url or message["ready"]
        elif "announce" in message:
            text, now = message["announce"], time.monotonic()
            if now - self._said.get(text, -ANNOUNCE_DEDUP_SECS) >= ANNOUNCE_DEDUP_SECS:
                self.announce(text)
            self._said[text] = now
        elif "error" in message:
            worker.error = (message.get("kind", "crash"), message["error"])

    def _exited(self, worker: _Worker, now: float) -> None:
        assert worker.proc is not None
        proc, worker.proc = worker.proc, None
        try:
            code = proc.wait(2)
        except subprocess.TimeoutExpired:  # it closed its status pipe but lingers: finish it
            proc.kill()
            code = proc.wait()
        if worker.status is not None:
            self._read_rest(worker)
        kind, message = worker.error or ("crash", _exit_reason(code))
        if kind == "trust":
            raise TrustError(message)
        if kind == "auth":
            raise AuthError(message)
        served = worker.ready_at
        worker.ready_at = None
        if served is not None:
            worker.streak = 0 if now - served >= STABLE_SECS else worker.streak + 1
            what = f"server worker {worker.index} (pid {proc.pid}) stopped unexpectedly: {message}"
        else:
            worker.failures += 1
            worker.streak += 1
            what = f"server worker {worker.index} (pid {proc.pid}) failed to start: {message}"
            serving = any(w.ready_at is not None for w in self.workers)
            if worker.failures >= MAX_START_FAILURES and (not self._announced or not serving):
                raise StartupError(
                    f"server worker {worker.index} failed to start {worker.failures} times in a row: {message}"
                )
        delay = min(RESTART_MIN_SECS * 2**worker.streak, RESTART_MAX_SECS)
        worker.restart_at = now + delay
        self.notice(f"{what}; restarting it in {delay:.1f} s")

    def _read_rest(self, worker: _Worker) -> None:
        while worker.status is not None:
            ready, _, _ = select.select([worker.status], [], [], 0)
            if not ready:
                os.close(worker.status)
                worker.status = None
                return
            self._read(worker)

    def _stop_all(self) -> None:
        running = [w.proc for w in self.workers if w.proc is not None]
        self._terminate()
        deadline = (self._stop_at or time.monotonic()) + STOP_SECS
        for proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for worker in self.workers:
            worker.proc = None
            if worker.status is not None:
                os.close(worker.status)
                worker.status = None


def _feed(pipe: IO[bytes], payload: bytes) -> None:
    with contextlib.suppress(OSError):  # it died at once: its exit is handled like any other
        pipe.write(payload)
    with contextlib.suppress(OSError):
        pipe.close()


def _exit_reason(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with code {code}"


# --- the worker's side --------------------------------------------------------------------------------------------


class _Status:
    """The worker's end of its status pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, **message: str) -> None:
        data = (json.dumps(message) + "\n").encode()
        with contextlib.suppress(OSError):  # the parent is gone: PR_SET_PDEATHSIG stops us anyway
            while data:
                data = data[os.write(self.fd, data) :]


def _die_with_parent(parent: int) -> None:
    """Get SIGTERM when the parent dies (Linux), and stop now if it already has."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        raise SystemExit(0)


def worker_main(argv: list[str]) -> int:
    """One worker: read its WorkerSpec from stdin, build the app, serve; the exit code says how it ended."""
    args = dict(zip(argv[0::2], argv[1::2], strict=False))
    status = _Status(int(args["--status-fd"]))
    _die_with_parent(int(args["--parent"]))
    try:
        spec: WorkerSpec = pickle.load(sys.stdin.buffer)
        sys.stdin.close()
        from specai.server.app import create_app
        from specai.server.run import serve

        app = create_app(spec.settings, cert=spec.info)
        server = spec.settings.server
        serve(
            app,
            server.host,
            server.port,
            spec.cert,
            lambda url: status.send(ready=url),
            lambda text: status.send(announce=text),
        )
    except KeyboardInterrupt:  # Ctrl-C reached the whole process group before serving began
        return 0
    except SpecaiError as exc:
        kind = "trust" if isinstance(exc, TrustError) else "auth" if isinstance(exc, AuthError) else "startup"
        status.send(error=exc.message, kind=kind)
        return _EXIT[kind]
    except Exception as exc:
        log.exception("server worker %s failed", args.get("--worker", "?"))
        status.send(error=f"{type(exc).__name__}: {exc}", kind="crash")
        return _EXIT["crash"]
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
