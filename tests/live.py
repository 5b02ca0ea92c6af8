"""Real processes for the live tests, in one place: the CLI, `specai server` (alone or as a mesh cluster), a
pseudo-terminal, one SSE reader, wait-until, throwaway certificates and a recording TLS listener.

Every process a test starts goes through `subprocess.Popen` or `os.fork`, which conftest guards: a test that starts
one without the `live` marker fails, so `make test-fast` (`-m "not live"`) never starts a process.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import itertools
import json
import os
import queue
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
from argon2 import PasswordHasher
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from databases import SHARED_TOKEN_SECRET, on_database, seed_users

from specai.config import Settings, load_settings
from specai.errors import ConfigError
from specai.store.urls import shares_state

PASSWORD = "pw-one-two"
LISTENING = re.compile(r"listening on (https://\S+) fingerprint ([0-9A-F:]{95})")
PORT_TAKEN = re.compile(r"already in use|Address in use|EADDRINUSE", re.IGNORECASE)
SPECAI = [sys.executable, "-m", "specai"]


# -- waiting -------------------------------------------------------------------------------------------------------


def wait_until(
    check: Callable[[], Any], timeout: float = 15, what: str = "condition", every: float = 0.05
) -> Any:
    """Poll `check` until it returns something truthy (its value), failing after `timeout` seconds.

    An HTTP error, KeyError or AssertionError while polling counts as "not yet" (a restarting server, say)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except (httpx.HTTPError, KeyError, AssertionError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(every)


class Lines:
    """The lines of a pipe, read by a thread so that a test can wait for one with a timeout."""

    def __init__(self, pipe: IO[str]) -> None:
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()  # None: the pipe ended
        self._thread = threading.Thread(target=self._pump, args=(pipe,), daemon=True)
        self._thread.start()

    def _pump(self, pipe: IO[str]) -> None:
        try:
            for line in pipe:
                self.seen.append(line.rstrip("\n"))
                self._queue.put(line.rstrip("\n"))
        except ValueError:
            pass  # the pipe was closed under us
        finally:
            self._queue.put(None)

    def expect(self, match: str | Callable[[str], bool], timeout: float = 20) -> str:
        """The next line that contains `match` (or satisfies it), skipping others; fails after `timeout` s or
        when the pipe ends first (`PipeEnded`)."""
        test = match if callable(match) else (lambda line: match in line)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                self._queue.put(None)  # still ended for the next caller
                raise PipeEnded(f"the output ended before a line matching {match!r}; seen: {self.seen}")
            if test(line):
                return line
        raise AssertionError(f"no line matching {match!r} within {timeout} s; seen: {self.seen}")

    def next(self, timeout: float = 20) -> str:
        return self.expect(lambda _: True, timeout)

    def join(self, timeout: float = 5) -> None:
        """Wait for the pipe's end (the process has exited)."""
        self._thread.join(timeout)

    def text(self) -> str:
        return "".join(line + "\n" for line in self.seen)


class PipeEnded(AssertionError):
    """The process closed its output before the line a test waited for."""


# -- the CLI -------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (ServerProcess retries if it is taken by then)."""
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
    home: Path,
    *args: str,
    input: str | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
    environ: Mapping[str, str] | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m specai ARGS` as a real process (stdin is not a terminal); `environ` and `env` are added to
    its environment."""
    return subprocess.run(
        [*SPECAI, *args],
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        env=cli_env(home, **(environ or {}), **env),
        cwd=cwd or home,
        timeout=timeout,
    )


class CliProcess:
    """`specai ARGS` running in the background; its stdout and stderr arrive as `Lines`."""

    def __init__(
        self,
        home: Path,
        *args: str,
        cwd: Path | None = None,
        environ: Mapping[str, str] | None = None,
        **env: str,
    ) -> None:
        self.proc = subprocess.Popen(
            [*SPECAI, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(home, **(environ or {}), **env),
            cwd=cwd or home,
        )
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.stdout = Lines(self.proc.stdout)
        self.stderr = Lines(self.proc.stderr)

    def interrupt(self, timeout: float = 10) -> int:
        """Ctrl-C; returns the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Make sure the process is gone and its pipes are closed."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for lines, pipe in ((self.stdout, self.proc.stdout), (self.stderr, self.proc.stderr)):
            lines.join()
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> CliProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.kill()


# -- homes and users -----------------------------------------------------------------------------------------------


def make_home(base: Path, name: str = "home") -> Path:
    """An empty SPECAI_HOME (0700) named `name` under `base`."""
    path = base / name
    path.mkdir(mode=0o700)
    return path


_production_hashes: dict[str, str] = {}
_hash_lock = threading.Lock()


def production_hash(password: str) -> str:
    """An argon2id hash at the library's (production) cost, made once per password per test run.

    Homes served by a real server get these: it verifies them at full cost and, unlike with cheap test hashes,
    has nothing to upgrade on login."""
    with _hash_lock:
        if password not in _production_hashes:
            _production_hashes[password] = PasswordHasher().hash(password)
        return _production_hashes[password]


def add_user(home: Path, name: str, password: str = PASSWORD, role: str | None = None) -> None:
    """Add a user where `home`'s server reads it, in this process, as `specai auth add-user` would (the first user
    is an admin), without starting a CLI process for it: the credentials file, or the database when the home's
    config (if written yet) puts it on PostgreSQL. A user added to the file of such a home before its config is
    loaded into the database when its server starts (`ServerProcess`)."""
    from specai import auth
    from specai.users import directory, table

    settings = home_settings(home)
    cheap = auth._hasher
    auth._hasher = _CachedHasher()
    try:
        if settings is not None and shares_state(settings):
            on_database(settings, lambda store: table.add_user(store, name, password, role))  # type: ignore[arg-type]
        else:
            directory.add_user(home / "credentials.json", name, password, role)  # type: ignore[arg-type]
    finally:
        auth._hasher = cheap


SHARED_SETTLE_SECS = (
    1.5  # a change made on a PostgreSQL home reaches its servers within 1 s (checked with margin)
)


def settled(home: Path, check: Callable[[], Any], what: str) -> Any:
    """`check()` once on a home whose server reads users from its credentials file (it sees changes at once); on a
    PostgreSQL home, polled for up to `SHARED_SETTLE_SECS` (its servers reload changes within 1 s)."""
    settings = home_settings(home)
    if settings is None or not shares_state(settings):
        value = check()
        assert value, f"not so right away: {what}"
        return value
    return wait_until(check, SHARED_SETTLE_SECS, what, every=0.02)


def home_settings(
    home: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None, config: Path | None = None
) -> Settings | None:
    """The settings a CLI process on `home` would load (None when its config is broken: the process reports it)."""
    try:
        return load_settings(config, env=env or cli_env(home), cwd=cwd or home)
    except ConfigError:
        return None


class _CachedHasher(PasswordHasher):
    """Production parameters, one hash per password (see `production_hash`)."""

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        return production_hash(password if isinstance(password, str) else password.decode())


# -- servers -------------------------------------------------------------------------------------------------------


class ServerProcess:
    """A real `specai server` process; `start()` waits for its listening line.

    Without a fixed `port` it picks a free one and, should another process take it before the server binds it,
    starts again on another."""

    def __init__(
        self,
        home: Path,
        *args: str,
        port: int | None = None,
        cwd: Path | None = None,
        environ: Mapping[str, str] | None = None,
        **env: str,
    ) -> None:
        self.home = home
        self.fixed_port = port is not None
        self.port = port or free_port()
        self.extra = list(args)
        self.cwd = cwd or home
        self.env = cli_env(home, **(environ or {}), **env)
        self.proc: subprocess.Popen[str] | None = None
        self.lines: Lines | None = None
        self.url = ""
        self.fingerprint = ""
        self._der: bytes | None = None

    @property
    def args(self) -> list[str]:
        return ["server", "--port", str(self.port), *self.extra]

    def start(self, timeout: float = 30) -> ServerProcess:
        for attempt in range(5):
            try:
                return self._start_once(timeout)
            except PortTaken:
                if attempt == 4:
                    raise
                if self.fixed_port:
                    time.sleep(0.2)  # a restart on its own port: wait for the old socket to go
                else:
                    self.port = free_port()
        raise AssertionError("unreachable")

    def _start_env(self) -> dict[str, str]:
        """The environment of one start. A home whose server keeps its users in a PostgreSQL database gets the users
        of its credentials file loaded there first (`databases.seed_users`; names already there stay as they are)
        and, unless its test chose one (or none: `SPECAI_AUTH_TOKEN_SECRET=""`), the tests' shared token secret,
        which such a server requires."""
        config = next(
            (self.cwd / v for k, v in itertools.pairwise(self.extra) if k in ("--config", "-c")), None
        )
        settings = home_settings(self.home, self.env, self.cwd, config)
        if settings is None or not settings.auth.enabled or not shares_state(settings):
            return self.env
        seed_users(settings)
        if settings.auth.token_secret or "SPECAI_AUTH_TOKEN_SECRET" in self.env:
            return self.env
        return {**self.env, "SPECAI_AUTH_TOKEN_SECRET": SHARED_TOKEN_SECRET}

    def _start_once(self, timeout: float) -> ServerProcess:
        self._der = None
        self.proc = subprocess.Popen(
            [*SPECAI, *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self._start_env(),
            cwd=self.cwd,
        )
        assert self.proc.stdout is not None
        self.lines = Lines(self.proc.stdout)
        try:
            line = self.lines.expect(lambda text: bool(LISTENING.search(text)), timeout)
        except PipeEnded:
            code = self.wait_exit(10)
        except AssertionError:
            self.stop()
            raise RuntimeError(f"server did not start within {timeout} s: {self.text()}") from None
        else:
            match = LISTENING.search(line)
            assert match is not None
            self.url, self.fingerprint = match.group(1), match.group(2)
            return self
        if PORT_TAKEN.search(self.text()):
            raise PortTaken(self.text())
        raise RuntimeError(f"server exited {code}: {self.text()}")

    def text(self) -> str:
        """Everything the server printed so far."""
        return self.lines.text() if self.lines else ""

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
        """Release the output pipe once the process has ended (after its last lines were read)."""
        if self.proc is not None and self.proc.stdout is not None:
            if self.lines is not None:
                self.lines.join(2)
            self.proc.stdout.close()

    def der(self) -> bytes:
        """The certificate this process serves (fetched once per start)."""
        if self._der is None:
            from specai.identity.tls import fetch_peer_cert

            self._der = fetch_peer_cert("127.0.0.1", self.port)
        return self._der

    def client(self, token: str | None = None) -> httpx.Client:
        """An httpx client that trusts exactly this server's certificate."""
        from specai.identity.tls import pinned_ssl_context

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=self.url, verify=pinned_ssl_context(self.der()), headers=headers, timeout=30
        )

    def login(self, username: str = "alice", password: str = PASSWORD) -> str:
        """A bearer token from POST /auth/token."""
        with self.client() as client:
            response = client.post("/auth/token", json={"username": username, "password": password})
        assert response.status_code == 200, response.text
        return str(response.json()["token"])


class PortTaken(RuntimeError):
    """The server could not bind its port: someone else took it."""


@dataclass
class Node:
    """One instance of a cluster: its home, its process, and a client logged in as `user`. Its first start picks
    a free port; a restart keeps it, so that the other nodes find it again."""

    name: str
    home: Path
    port: int | None = None
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    user: str = "root"
    process: ServerProcess | None = None
    http: httpx.Client | None = None
    token: str = ""
    instance_id: str = ""

    def start(self) -> Node:
        """Start (or restart, on the same port) and log in."""
        self.process = ServerProcess(self.home, *self.args, port=self.port, environ=self.env).start()
        self.port = self.process.port
        self.token = self.process.login(self.user)
        self.http = self.process.client(self.token)
        self.instance_id = (self.home / "instance_id").read_text().strip()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        if self.process is not None:
            self.process.stop(sig)


NodeT = TypeVar("NodeT", bound=Node)


class Cluster(dict[str, NodeT]):
    """Named nodes, stopped together (`with Cluster() as nodes:`)."""

    def start(self, node: NodeT) -> NodeT:
        """Start `node` and add it under its name."""
        node.start()
        self[node.name] = node
        return node

    def stop(self) -> None:
        for node in self.values():
            node.stop()

    def __enter__(self) -> Cluster[NodeT]:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# -- server-sent events --------------------------------------------------------------------------------------------


@dataclass
class Event:
    """One SSE block: its fields (`data` parsed as JSON when it is), or a comment-only block (a keep-alive)."""

    event: str = "message"
    data: Any = None
    id: str | None = None
    comments: list[str] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)
    at: float = 0.0  # time.monotonic() when it arrived

    @property
    def is_comment(self) -> bool:
        return not self.fields


def sse_events(lines: Iterable[str]) -> Iterator[Event]:
    """Parse SSE lines into events as they arrive (comment-only blocks included: see `Event.is_comment`)."""
    block: list[str] = []
    for line in lines:
        if line:
            block.append(line)
            continue
        if block:
            yield _event(block)
            block = []
    if block:
        yield _event(block)


def _event(block: list[str]) -> Event:
    found = Event(at=time.monotonic())
    raw_data: list[str] = []
    for line in block:
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if not name:
            found.comments.append(value)
            continue
        found.fields.append((name, value))
        if name == "data":
            raw_data.append(value)
        elif name == "event":
            found.event = value
        elif name == "id":
            found.id = value
    if raw_data:
        text = "\n".join(raw_data)
        try:
            found.data = json.loads(text)
        except ValueError:
            found.data = text
    return found


def parse_sse(text: str) -> list[Event]:
    """Every event of a whole SSE body that carries data."""
    return [e for e in sse_events(text.replace("\r\n", "\n").split("\n")) if e.data not in (None, "")]


class SseReader:
    """Reads an SSE response in a thread (`client.stream(method, url, **options)`), keeping every data event.

    `until(events)` ends the read early; `wait_for` waits for a number of events or a condition on them."""

    def __init__(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        until: Callable[[list[Event]], bool] | None = None,
        **options: Any,
    ) -> None:
        self.events: list[Event] = []
        self.comments = 0
        self.status: int | None = None
        self.body = b""  # a refused stream's body
        self.error: BaseException | None = None
        self.connected = threading.Event()
        self.ended = threading.Event()
        self._request = (client, method, url, options)
        self._until = until
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, timeout: float = 10) -> SseReader:
        """Start reading; returns once the response headers arrived (or the request failed)."""
        self._thread.start()
        assert self.connected.wait(timeout), "the stream did not open"
        return self

    def _run(self) -> None:
        client, method, url, options = self._request
        try:
            with client.stream(method, url, **options) as response:
                self.status = response.status_code
                if response.status_code != 200:
                    self.body = response.read()
                    return
                self.connected.set()
                for event in sse_events(response.iter_lines()):
                    if event.is_comment:
                        self.comments += 1
                        continue
                    self.events.append(event)
                    if self._until is not None and self._until(self.events):
                        return
        except BaseException as exc:
            self.error = exc
        finally:
            self.connected.set()
            self.ended.set()

    def data(self, event: str | None = None) -> list[Any]:
        """The data of every event so far (of one event type, if given)."""
        return [e.data for e in list(self.events) if event is None or e.event == event]

    def wait_for(self, check: int | Callable[[list[Event]], bool], timeout: float = 15) -> None:
        """Wait for `check` events (or `check(events)` to hold); fails on timeout or an ended stream."""
        test = check if callable(check) else (lambda events: len(events) >= check)
        deadline = time.monotonic() + timeout
        while not test(self.events):
            if time.monotonic() >= deadline or self.ended.is_set():
                raise AssertionError(
                    f"waited for {check!r}: status {self.status}, {len(self.events)} events, "
                    f"error {self.error!r}: {[(e.event, e.data) for e in self.events]}"
                )
            time.sleep(0.01)

    def join(self, timeout: float = 10) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()


# -- a terminal ----------------------------------------------------------------------------------------------------

_CTTY_SHIM = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, '-m', 'specai', *sys.argv[1:]])"
)


class Terminal:
    """The CLI on a pseudo-terminal that is its controlling terminal, as in a real shell."""

    def __init__(self, home: Path, *args: str, **env: str) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CTTY_SHIM, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=cli_env(home, TERM="xterm", **env),
            cwd=home,
            start_new_session=True,
        )
        os.close(slave)
        self.output = b""
        self.position = 0

    def _read(self, timeout: float) -> bool:
        """Read what is there within `timeout`; False once the terminal is closed."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += data
        return bool(data)

    def expect(self, text: str, timeout: float = 30) -> None:
        """Wait for `text` after what was expected before."""
        deadline = time.monotonic() + timeout
        while (index := self.output.find(text.encode(), self.position)) < 0:
            assert time.monotonic() < deadline, f"{text!r} not seen in {self.output!r}"
            if not self._read(0.1) and self.proc.poll() is not None:
                raise AssertionError(f"process ended before {text!r}: {self.output!r}")
        self.position = index + len(text)

    def wait_echo_off(self, timeout: float = 10) -> None:
        """Wait until the program has switched echo off (termios of the slave, read through the master)."""
        deadline = time.monotonic() + timeout
        while termios.tcgetattr(self.master)[3] & termios.ECHO:
            assert time.monotonic() < deadline, "echo never switched off for a password prompt"
            self._read(0.02)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def type_line(self, text: str) -> None:
        self.type(text.encode() + b"\r")

    def finish(self, timeout: float = 30) -> int:
        """Wait for the program to exit, collecting what it still prints; returns its exit code."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, f"still running: {self.output!r}"
            self._read(0.1)
        while select.select([self.master], [], [], 0.05)[0] and self._read(0):
            pass
        return self.proc.returncode

    def text(self) -> str:
        return self.output.decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# -- certificates and a recording TLS listener ---------------------------------------------------------------------


@dataclass(frozen=True)
class CertPair:
    cert: Path
    key: Path
    certificate: x509.Certificate

    @property
    def fingerprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def write_cert_pair(directory: Path, kind: str = "ec", cn: str = "127.0.0.1", days: int = 30) -> CertPair:
    """A throwaway self-signed certificate for 127.0.0.1/localhost and its key, written as `<kind>.crt/.key`.

    RSA keys are written as PKCS#1 ("BEGIN RSA PRIVATE KEY"), EC keys as SEC1 ("BEGIN EC PRIVATE KEY"): the
    formats a user's own files come in (trustme writes PKCS#8 only, and only CA-issued leaves)."""
    key: Any = (
        rsa.generate_private_key(65537, 2048) if kind == "rsa" else ec.generate_private_key(ec.SECP256R1())
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    key_path, cert_path = directory / f"{kind}.key", directory / f"{kind}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return CertPair(cert_path, key_path, certificate)


@dataclass
class Recorded:
    """One request as it arrived, byte for byte."""

    raw: bytes
    request_line: str
    headers: dict[str, str]
    body: bytes


class RecordingTlsServer:
    """A TLS listener on 127.0.0.1 with a throwaway certificate: counts handshakes, records every byte a client
    sends after one (`raw`) and every whole request, and answers 401 to each (a careless client would then log
    in)."""

    def __init__(self, directory: Path) -> None:
        pair = write_cert_pair(directory, "ec", cn="recorder")
        self.fingerprint = pair.fingerprint
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pair.cert, pair.key)
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = int(self.sock.getsockname()[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self.handshakes = 0
        self.raw = bytearray()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with conn, self.context.wrap_socket(conn, server_side=True) as tls:
                with self._lock:
                    self.handshakes += 1
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = tls.recv(65536)
                    if not chunk:
                        self._keep(data)
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
                while len(body) < int(headers.get("content-length", "0")):
                    chunk = tls.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                raw = head + b"\r\n\r\n" + body
                self._keep(raw, Recorded(raw, lines[0], headers, body))
                answer = b'{"error":"who are you?","code":"unauthorized"}'
                tls.sendall(
                    b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    + f"content-length: {len(answer)}\r\n\r\n".encode()
                    + answer
                )
        except (OSError, ssl.SSLError, ValueError):
            return

    def _keep(self, raw: bytes, request: Recorded | None = None) -> None:
        with self._lock:
            self.raw += raw
            if request is not None:
                self.requests.append(request)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def loopback_server(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A listener on 127.0.0.1:<port> (yielded) that passes each accepted connection to `handle` on one thread,
    closing it afterwards and ignoring socket errors; stops with the block."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # ssl.SSLError is an OSError
                handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def cli_login(client_home: Path, server: ServerProcess, user: str = "alice", password: str = PASSWORD) -> str:
    """`specai login` with the real CLI (pinned by --fingerprint, password from stdin); returns the saved token."""
    result = run_cli(
        client_home,
        *("login", "--server", server.url, "--username", user, "--password-stdin"),
        *("--fingerprint", server.fingerprint),
        input=password + "\n",
    )
    assert result.returncode == 0, result.stderr
    return str(json.loads((client_home / "tokens.json").read_text())[server.url]["token"])
