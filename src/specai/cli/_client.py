"""Open a pinned SpecaiClient for a command: server URL, pin, saved token, and trust-on-first-use prompting."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.prompt import Confirm

from specai.cli._console import USAGE, err, fail
from specai.config import home_dir
from specai.errors import SpecaiError
from specai.identity.fingerprint import normalize_fingerprint
from specai.identity.trust import KnownServers, SavedTokens, parse_server

if TYPE_CHECKING:
    from specai.client import SpecaiClient


def _named(ctx: typer.Context, param: typer.CallbackParam, envvar: str) -> str:
    """How the user gave the value: the option's name, the argument's, or the environment variable it came from."""
    source = ctx.get_parameter_source(param.name) if param.name else None
    if source is not None and source.name == "ENVIRONMENT":  # by name: Typer may bundle its own click
        return envvar
    if param.param_type_name == "argument":
        return (param.name or "value").upper()
    return (param.opts or [f"--{param.name}"])[0]


def check_server_url(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """A `--server` (or SPECAI_SERVER) that is not `https://HOST[:PORT]` is a usage error, one line, exit 2."""
    if value is None or ctx.resilient_parsing:
        return value
    try:
        parse_server(value)
    except SpecaiError as exc:
        fail(f"{_named(ctx, param, 'SPECAI_SERVER')}: {exc.message}", USAGE)
    return value


def check_fingerprint(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> str | None:
    """A `--fingerprint` (or SPECAI_FINGERPRINT) that is not a SHA-256 fingerprint is a usage error, exit 2."""
    if value is None or ctx.resilient_parsing:
        return value
    try:
        normalize_fingerprint(value)
    except SpecaiError as exc:
        fail(f"{_named(ctx, param, 'SPECAI_FINGERPRINT')}: {exc.message}", USAGE)
    return value


ServerOption = Annotated[
    str,
    typer.Option(
        "--server",
        "-s",
        envvar="SPECAI_SERVER",
        help="Server URL (https://HOST:PORT).",
        show_default=True,
        callback=check_server_url,
    ),
]
FingerprintOption = Annotated[
    Optional[str],
    typer.Option(
        "--fingerprint",
        envvar="SPECAI_FINGERPRINT",
        help="Expected SHA-256 fingerprint of the server's certificate (pins it).",
        callback=check_fingerprint,
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


@dataclass(frozen=True)
class SavedLogin:
    """What `specai login` saved for one server: the token, whom it was issued to, and until when."""

    origin: str
    token: str
    username: str | None
    expires_at: int | None

    @classmethod
    def of(cls, origin: str, entry: Any) -> SavedLogin | None:
        """The entry of tokens.json for `origin`, or None when there is none (or it holds no token)."""
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str) or not entry["token"]:
            return None
        username, expires_at = entry.get("username"), entry.get("expires_at")
        return cls(
            origin,
            entry["token"],
            username if isinstance(username, str) else None,
            expires_at if isinstance(expires_at, int) and not isinstance(expires_at, bool) else None,
        )

    @property
    def expired(self) -> bool:
        """True once the expiry `specai login` noted has passed (the server decides; this is what we know)."""
        return self.expires_at is not None and self.expires_at <= time.time()


def saved_login(origin: str) -> SavedLogin | None:
    """The login saved for `origin` in $SPECAI_HOME/tokens.json, if any."""
    return SavedLogin.of(origin, SavedTokens(home_dir()).get(origin))


def not_logged_in(origin: str, login: SavedLogin | None) -> str:
    """The one line that says there is no usable login for `origin`, and how to get one."""
    fix = f"run specai login --server {origin}"
    if login is not None and login.expired and login.expires_at is not None:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(login.expires_at))
        return f"the token for {origin} expired at {when}: {fix}"
    return f"not logged in to {origin}: {fix}"
