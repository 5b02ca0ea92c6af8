"""`specai server`: check everything, then serve agents over TLS until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from specai.cli import _settings
from specai.cli._console import STARTUP_FAILURE, USAGE, err, exit_code_for, fail, out, print_warnings, warn
from specai.config import JoinSettings, Settings
from specai.errors import AuthError, ConfigError, SpecaiError, StartupError, TrustError

if TYPE_CHECKING:
    from litestar import Litestar

    from specai.home_lock import ServerLocks
    from specai.identity.tls import CertInfo, CertPaths
    from specai.store import Store


def server(
    ctx: typer.Context,
    host: Annotated[
        Optional[str], typer.Option(help="Address to bind [default: [server] host, 127.0.0.1].")
    ] = None,
    port: Annotated[
        Optional[int], typer.Option(min=1, max=65535, help="Port to bind [default: [server] port, 3000].")
    ] = None,
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Config file to use.")] = None,
    cert: Annotated[
        Optional[Path], typer.Option(help="PEM certificate to serve instead of the generated one.")
    ] = None,
    key: Annotated[
        Optional[Path], typer.Option(help="PEM private key for --cert (PKCS#1, PKCS#8 or EC).")
    ] = None,
    san: Annotated[
        Optional[list[str]],
        typer.Option(help="Extra DNS name or IP for a generated certificate (repeatable)."),
    ] = None,
    allow_unauthenticated: Annotated[
        bool,
        typer.Option(
            help="Allow a non-loopback --host while auth is disabled (anyone on the network can query)."
        ),
    ] = False,
    join: Annotated[
        Optional[str],
        typer.Option(
            help="Join the mesh whose registry is at URL (https://HOST:PORT), once this server answers; "
            "logs in with [mesh] username/password_source or SPECAI_JOIN_TOKEN."
        ),
    ] = None,
    join_fingerprint: Annotated[
        Optional[str],
        typer.Option(
            help="The registry's certificate fingerprint (`specai cert fingerprint` there); "
            "default: its pin in known_servers.json."
        ),
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            max=64,
            help="Server processes sharing the port [default: [server] workers, 1]; more than 1 needs "
            "[database] url on PostgreSQL.",
        ),
    ] = None,
) -> None:
    """Serve agents over HTTPS (TLS is always on).

    On first start a self-signed certificate is created in $SPECAI_HOME/tls and reused afterwards, so
    clients can pin its fingerprint. With [auth] enabled = true every route but /health, /cert and
    /auth/token needs a bearer token.

    One $SPECAI_HOME serves one server at a time: a second one on the same home (or on the same SQLite
    database file) exits 3 at once, naming the process that has it. Give each server its own home.

    With --workers N (PostgreSQL only) N processes serve the port; this one starts them, restarts one that
    dies, and stops them all on Ctrl-C or SIGTERM.

    Examples:

      specai server

      specai server --host 0.0.0.0 --port 8443 --san myhost.lan

      specai server --cert /etc/ssl/me.pem --key /etc/ssl/me.key

      SPECAI_HOME=~/.spec-ai-web1 specai server --port 3001 --join https://10.0.0.5:3000 --join-fingerprint FP

      specai server --workers 2        # with [database] url = "postgresql://..."
    """
    settings = _settings.load(ctx, config)
    if join_fingerprint and not join:
        fail("--join-fingerprint needs --join URL", USAGE)
    settings = _apply_flags(settings, host, port, cert, key, tuple(san or ()))
    if workers is not None:
        settings = dataclasses.replace(settings, server=dataclasses.replace(settings.server, workers=workers))
    _check_workers(settings, from_flag=workers is not None)
    if join is not None:
        settings = dataclasses.replace(settings, join=JoinSettings(join, join_fingerprint))
    run_server(settings, allow_unauthenticated)


def run_server(settings: Settings, allow_unauthenticated: bool) -> None:
    """Check, prepare and serve (joining `settings.join` once serving); every failure before serving exits 3."""
    from specai.identity.tls import ensure_server_cert, read_cert
    from specai.server.app import create_app

    host, port = settings.server.host, settings.server.port
    if not settings.auth.enabled and not _is_loopback(host) and not allow_unauthenticated:
        fail(
            f"refusing to serve {host} with auth disabled: anyone who can reach it could use your agents. "
            "Enable [auth] (see `specai auth add-user`) or pass --allow-unauthenticated",
            STARTUP_FAILURE,
        )
    try:
        locks = _lock(settings)  # held until this process exits: one server per home and SQLite file
        if settings.join is not None:
            _check_join(settings, settings.join)
        paths = ensure_server_cert(settings)
        info = read_cert(paths.cert)
        print_warnings(paths.warnings)
        _check_port_free(host, port)
        app = create_app(settings, cert=info)
        database_warnings = asyncio.run(_check_database(settings))
    except ConfigError as exc:
        fail(exc.message)
    except SpecaiError as exc:
        fail(exc.message, STARTUP_FAILURE)
    for line in database_warnings:
        warn(line)
    for agent in app.state.specai.runtime.agents.values():
        if not agent.available:
            warn(f"agent '{agent.id}' is unavailable: {agent.unavailable_reason}")
    if paths.generated:
        err.print(f"created a self-signed certificate in {paths.cert.parent}")
    if not settings.auth.enabled:
        err.print("[yellow]auth is disabled[/]: every client that reaches this port can query agents")

    _serve(settings, app, paths, info, locks)
    locks.release()
    err.print("specai server stopped")
    if settings.server.workers > 1:  # the workers are gone: skip tearing down this heap (seconds under load)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _serve(settings: Settings, app: Litestar, paths: CertPaths, info: CertInfo, locks: ServerLocks) -> None:
    """Serve in this process, or with `[server] workers` > 1 in that many worker processes, until stopped."""
    from specai.server.run import serve
    from specai.server.workers import Supervisor, WorkerSpec

    count = settings.server.workers

    def ready(url: str) -> None:
        workers = f" ({count} workers)" if count > 1 else ""
        out.print(f"specai server listening on [bold]{url}[/] fingerprint {info.fingerprint}{workers}")

    def announce(message: str) -> None:
        out.print(message, markup=False, highlight=False)

    try:
        if count == 1:
            serve(app, settings.server.host, settings.server.port, paths, ready, announce)
        else:
            spec = WorkerSpec(settings, paths, info)
            Supervisor(spec, count, locks.fds, ready, announce, warn).run()
    except (TrustError, AuthError) as exc:  # a refused --join: the registry's identity, or our mesh login
        fail(f"cannot join the mesh: {exc.message}", exit_code_for(exc))
    except SpecaiError as exc:
        fail(exc.message, STARTUP_FAILURE)
    except KeyboardInterrupt:
        pass


def _lock(settings: Settings) -> ServerLocks:
    """Refuse to start when another server uses this home, or this SQLite file from another home."""
    from specai.home_lock import lock_server
    from specai.store.urls import database_url, sqlite_file

    url = database_url(settings)
    return lock_server(settings.home, sqlite_file(url) if url.drivername.startswith("sqlite") else None)


def _check_join(settings: Settings, join: JoinSettings) -> None:
    """Refuse a bad --join URL, fingerprint or mesh login setting before anything starts."""
    from specai.identity.fingerprint import normalize_fingerprint
    from specai.identity.trust import parse_server
    from specai.server.mesh_link import mesh_credentials

    try:
        parse_server(join.url)
        if join.fingerprint is not None:
            normalize_fingerprint(join.fingerprint)
    except SpecaiError as exc:
        fail(f"--join: {exc.message}", USAGE)
    mesh_credentials(settings)


def _check_workers(settings: Settings, from_flag: bool) -> None:
    """Refuse several server processes on SQLite (one writer, one server per file) before anything starts."""
    from specai.store.urls import shares_state

    count = settings.server.workers
    try:
        if count == 1 or shares_state(settings):
            return
    except ConfigError as exc:
        fail(exc.message)
    why = (
        "needs [database] url on PostgreSQL: SQLite has one writer at a time and one server per database "
        'file; serve with one worker, or see README "Running several servers"'
    )
    if from_flag:
        fail(f"--workers {count} {why}", USAGE)
    where = f" in {settings.config_path}" if settings.config_path else ""
    fail(f"[server] workers = {count}{where} {why}")


DatabaseCheck = Callable[["Store", Settings], Awaitable[Optional[str]]]


async def _check_database(settings: Settings) -> list[str]:
    """Open and migrate the database once before serving, so a bad URL or schema stops start-up clearly, then
    run each of `_DATABASE_CHECKS` on it; a check raises a SpecaiError to refuse, or returns a warning line."""
    from specai.store import Store

    store = await Store.open(settings)
    try:
        found = [await check(store, settings) for check in _DATABASE_CHECKS]
    finally:
        await store.close()
    return [line for line in found if line]


async def _connection_budget(store: Store, settings: Settings) -> str | None:
    """PostgreSQL: warn when this server's connections, with the other specai processes', may not fit."""
    from specai.store import budget
    from specai.store.urls import is_postgres

    if not is_postgres(store.engine.url):
        return None
    async with store.connect() as conn:
        limits = await budget.read_limits(conn)
    db = settings.database
    return budget.check(db.pool_size, db.max_overflow, settings.server.workers, limits)


async def _users_exist(store: Store, settings: Settings) -> str | None:
    """Auth on PostgreSQL: refuse to serve an empty users table (nobody could log in)."""
    from specai.store.urls import shares_state
    from specai.users import table

    if settings.auth.enabled and shares_state(settings):
        await table.require_users(store)
    return None


_DATABASE_CHECKS: tuple[DatabaseCheck, ...] = (_connection_budget, _users_exist)


def _apply_flags(
    settings: Settings,
    host: str | None,
    port: int | None,
    cert: Path | None,
    key: Path | None,
    san: tuple[str, ...],
) -> Settings:
    changes: dict[str, Any] = {}
    if host is not None:
        changes["host"] = host
    if port is not None:
        changes["port"] = port
    if cert is not None or key is not None:
        if cert is None or key is None:
            fail("--cert and --key go together: give both", STARTUP_FAILURE)
        changes["tls_cert_path"] = cert.expanduser()
        changes["tls_key_path"] = key.expanduser()
    if san:
        changes["tls_san"] = (*settings.server.tls_san, *san)
    return dataclasses.replace(settings, server=dataclasses.replace(settings.server, **changes))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} on {host} is already in use; choose another with --port"
                ) from None
            raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
