"""Open a pinned SpecaiClient for a command: server URL, pin, saved token, and trust-on-first-use prompting."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.prompt import Confirm

from specai.cli._console import err
from specai.config import home_dir
from specai.identity.trust import KnownServers, SavedTokens, parse_server

if TYPE_CHECKING:
    from specai.client import SpecaiClient

ServerOption = Annotated[
    str, typer.Option("--server", "-s", envvar="SPECAI_SERVER", help="Server URL.", show_default=True)
]
FingerprintOption = Annotated[
    Optional[str],
    typer.Option(
        "--fingerprint",
        envvar="SPECAI_FINGERPRINT",
        help="Expected SHA-256 fingerprint of the server's certificate (pins it).",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _confirm(origin: str, fingerprint: str) -> bool:
    err.print(f"The server [bold]{origin}[/] is not known yet.")
    err.print(f"Its certificate fingerprint (SHA-256) is:\n  [bold]{fingerprint}[/]")
    err.print("Compare it with `specai cert fingerprint` run on the server.")
    return Confirm.ask("Trust this server and remember it?", default=False, console=err)


def open_client(server: str, fingerprint: str | None, *, use_saved_token: bool = True) -> SpecaiClient:
    """Connect with pinning; ask on first use only when a person is at the terminal."""
    from specai.client import SpecaiClient  # httpx is only loaded by commands that talk to a server

    home = home_dir()
    interactive = sys.stdin.isatty() and sys.stderr.isatty()
    token = None
    if use_saved_token:
        token = os.environ.get("SPECAI_TOKEN") or _saved_token(home, server)
    return SpecaiClient.connect(
        server,
        KnownServers(home),
        fingerprint=fingerprint,
        confirm=_confirm if interactive else None,
        token=token,
    )


def _saved_token(home: Path, server: str) -> str | None:
    entry = SavedTokens(home).get(parse_server(server).origin)
    return entry.get("token") if isinstance(entry, dict) else None
