"""The `specai` command line: parse, call the core or the client, render.

Commands are imported when used (see `_lazy`), so `--help`, `--version` and the local-only commands start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from specai import __version__
from specai.cli._lazy import LazyCommand, LazyGroup


class Commands(LazyGroup):
    """Every `specai` command, in the order `specai --help` lists them."""

    lazy = (
        LazyCommand("server", "specai.cli.server:server", "Serve agents over HTTPS (TLS is always on)."),
        LazyCommand(
            "login",
            "specai.cli.remote:login",
            "Pin the server's certificate, exchange a password for a token, and save it (0600).",
        ),
        LazyCommand(
            "logout",
            "specai.cli.remote:logout",
            "Revoke the saved token on the server, then forget it (the pin stays).",
        ),
        LazyCommand(
            "token",
            "specai.cli.account:token",
            "Print the token the CLI sends to the server, and nothing else (like `gh auth token`).",
        ),
        LazyCommand(
            "whoami",
            "specai.cli.account:whoami",
            "Show whom the CLI is logged in as on a server: user, role, token expiry and the pinned fingerprint.",
        ),
        LazyCommand(
            "servers",
            "specai.cli.servers:app",
            "The servers this CLI trusts (pinned certificates) and is logged in to; forget one.",
        ),
        LazyCommand("health", "specai.cli.remote:health", "Check that a server is up."),
        LazyCommand("agents", "specai.cli.remote:agents", "List the agents a server offers."),
        LazyCommand(
            "query",
            "specai.cli.remote:query",
            "Ask an agent; the answer streams to the terminal as it is produced.",
        ),
        LazyCommand("auth", "specai.cli.auth:app", "Manage users, roles and tokens."),
        LazyCommand("cert", "specai.cli.cert:app", "Show the server's TLS identity."),
        LazyCommand("sessions", "specai.cli.sessions:app", "Your conversations on a server."),
        LazyCommand(
            "graph",
            "specai.cli.graph:app",
            "The knowledge graph on a server: nodes, edges, bootstrap, sharing, and a live feed of changes.",
        ),
        LazyCommand(
            "mesh",
            "specai.cli.mesh:app",
            "The mesh a server belongs to: its members (live or stale, and the leader), and messages between them.",
        ),
        LazyCommand(
            "sync",
            "specai.cli.sync:app",
            "Graph sync between mesh members: a session's status and peers, enable/disable, pull now, conflicts.",
        ),
        LazyCommand(
            "a2a",
            "specai.cli.a2a:app",
            "Talk to any A2A agent (Agent2Agent protocol): print its card, send it a message; pinned TLS.",
        ),
    )


app = typer.Typer(
    name="specai",
    cls=Commands,
    no_args_is_help=True,
    help="Serve AI agents over TLS with bearer-token auth, and talk to them from the terminal.",
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"specai {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    config: Annotated[
        Optional[Path],
        typer.Option(
            "--config",
            "-c",
            envvar="SPECAI_CONFIG",
            help="Config file (default: ./spec-ai.config.toml, then $SPECAI_HOME/spec-ai.config.toml).",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Serve AI agents over TLS with bearer-token auth, and talk to them from the terminal."""


def main() -> None:
    """Console-script entry point."""
    app()
