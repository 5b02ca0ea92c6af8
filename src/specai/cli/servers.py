"""`specai servers`: the servers this CLI has pinned (and its logins to them), and forgetting one."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from specai.cli._client import JsonOption, SavedLogin, check_server_url
from specai.cli._console import fail, handle_errors, out, print_json
from specai.cli._duration import until, utc_stamp
from specai.config import home_dir
from specai.identity.trust import KnownServers, LastSessions, SavedTokens, parse_server

app = typer.Typer(invoke_without_command=True, no_args_is_help=False)  # help: the callback's docstring


@app.callback(invoke_without_command=True)
@handle_errors
def servers(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """The servers this CLI trusts (pinned certificates) and is logged in to; forget one.

    Without a subcommand, lists every pinned server ($SPECAI_HOME/known_servers.json) with its fingerprint, and
    the user and token expiry of the login saved for it ($SPECAI_HOME/tokens.json), if any.

    Examples:

      specai servers

      specai servers --json

      specai servers forget https://10.0.0.5:3000
    """
    if ctx.invoked_subcommand is not None:
        return
    home = home_dir()
    pins, tokens = KnownServers(home).all(), SavedTokens(home).all()
    known = [
        (origin, pins.get(origin), SavedLogin.of(origin, tokens.get(origin))) for origin in {**pins, **tokens}
    ]
    if json_output:
        print_json({"servers": [_row(origin, pin, login) for origin, pin, login in known]})
        return
    if not known:
        out.print("no pinned servers yet (`specai login --server URL` pins one)")
        return
    for origin, pin, login in known:
        out.print(origin)
        out.print(f"  fingerprint  {pin if isinstance(pin, str) else 'not pinned'}")
        out.print(f"  login        {_login_text(login)}")


def _row(origin: str, pin: Any, login: SavedLogin | None) -> dict[str, Any]:
    return {
        "origin": origin,
        "fingerprint": pin if isinstance(pin, str) else None,
        "logged_in": login is not None,
        "username": None if login is None else login.username,
        "expires_at": None if login is None else utc_stamp(login.expires_at),
        "expired": login is not None and login.expired,
    }


def _login_text(login: SavedLogin | None) -> str:
    if login is None:
        return "none"
    who = login.username or "a saved token"
    return who if login.expires_at is None else f"{who}, token until {until(login.expires_at)}"


@app.command("forget")
@handle_errors
def forget(
    url: Annotated[
        str,
        typer.Argument(
            help="The server to forget (https://HOST:PORT).", metavar="URL", callback=check_server_url
        ),
    ],
) -> None:
    """Remove a server's pin and the token saved for it.

    The token is only forgotten here; `specai logout --server URL` first also revokes it on the server. The
    next command that talks to the server asks again whether to trust its certificate.

    Example:

      specai servers forget https://10.0.0.5:3000
    """
    origin = parse_server(url).origin
    home = home_dir()
    pins, tokens = KnownServers(home), SavedTokens(home)
    pin, login = pins.get(origin), SavedLogin.of(origin, tokens.get(origin))
    removed_pin, removed_token = pins.remove(origin), tokens.remove(origin)
    LastSessions(home).remove(origin)
    if not removed_pin and not removed_token:
        fail(
            f"nothing to forget: {origin} is not pinned and no token is saved for it (`specai servers` lists them)"
        )
    parts = []
    if removed_pin:
        parts.append(f"its pin ({pin})")
    if removed_token:
        who = f" of {login.username}" if login is not None and login.username else ""
        parts.append(f"the saved token{who} (forgotten here only, not revoked on the server)")
    out.print(f"forgot {origin}: {' and '.join(parts)}")
