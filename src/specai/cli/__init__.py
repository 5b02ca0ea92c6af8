"""The `specai` command line: parse, call the core or the client, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from specai import __version__
from specai.cli import auth, cert, graph, mesh, remote, server, sessions

app = typer.Typer(
    name="specai",
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


app.command(name="server")(server.server)
app.add_typer(auth.app, name="auth")
app.add_typer(cert.app, name="cert")
app.command(name="login")(remote.login)
app.command(name="logout")(remote.logout)
app.command(name="health")(remote.health)
app.command(name="agents")(remote.agents)
app.command(name="query")(remote.query)
app.add_typer(sessions.app, name="sessions")
app.add_typer(graph.app, name="graph")
app.add_typer(mesh.app, name="mesh")


def main() -> None:
    """Console-script entry point."""
    app()
