"""`specai token` and `specai whoami`: the login this CLI holds for a server, for other tools and for people."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
import time
from typing import Any

from specai.cli._client import JsonOption, SavedLogin, ServerOption, not_logged_in, saved_login
from specai.cli._console import AUTH_FAILURE, fail, handle_errors, out, print_json
from specai.cli._duration import until, utc_stamp
from specai.config import DEFAULT_SERVER_URL, home_dir
from specai.identity.trust import KnownServers, parse_server

API_KEY_PREFIX = "spk_"  # users.keys.KEY_PREFIX (that module loads the database layer); opaque to the client


@handle_errors
def token(server: ServerOption = DEFAULT_SERVER_URL) -> None:
    """Print the token the CLI sends to the server, and nothing else (like `gh auth token`).

    The token is the one `specai login` saved for the server (--server, else SPECAI_SERVER, else the default).
    When SPECAI_TOKEN is set, every command sends it instead of a saved token, so that is what is printed (as
    `gh auth token` prints GH_TOKEN). Exit 4 when there is no token for the server or the saved one has expired.

    A login token expires (token_expiry_secs on the server, a day by default); for a tool configured once, make
    an API key instead: specai auth token create --name NAME.

    Examples:

      curl --cacert server.pem -H "Authorization: Bearer $(specai token)" https://127.0.0.1:3000/agents

      OPENAI_API_KEY=$(specai token --server https://10.0.0.5:3000) llm -m default "hello"
    """
    from_env = os.environ.get("SPECAI_TOKEN")
    if from_env:
        sys.stdout.write(from_env + "\n")
        return
    origin = parse_server(server).origin
    login = saved_login(origin)
    if login is None or login.expired:
        fail(not_logged_in(origin, login), AUTH_FAILURE)
    sys.stdout.write(login.token + "\n")


@handle_errors
def whoami(server: ServerOption = DEFAULT_SERVER_URL, json_output: JsonOption = False) -> None:
    """Show whom the CLI is logged in as on a server: user, role, token expiry and the pinned fingerprint.

    Nothing is sent to the server: this is what `specai login` saved here (or what SPECAI_TOKEN carries, read
    without verifying it; only the server can say whether a token is still honoured). Exit 4 when not logged
    in, or when the token has expired (after printing what is known).

    Examples:

      specai whoami

      specai whoami --server https://10.0.0.5:3000 --json
    """
    origin = parse_server(server).origin
    from_env = os.environ.get("SPECAI_TOKEN")
    login = saved_login(origin)
    if not from_env and login is None:
        fail(not_logged_in(origin, None), AUTH_FAILURE)
    facts = _facts(origin, from_env, login)
    if json_output:
        print_json(facts)
    else:
        _show(facts)
    if facts["expired"] and from_env:
        fail(
            f"the token in SPECAI_TOKEN has expired (as it says): set a fresh one, or unset it and run "
            f"specai login --server {origin}",
            AUTH_FAILURE,
        )
    if facts["expired"]:
        fail(not_logged_in(origin, login), AUTH_FAILURE)


def _facts(origin: str, from_env: str | None, login: SavedLogin | None) -> dict[str, Any]:
    """What is known locally about the login for `origin` (SPECAI_TOKEN, when set, is what gets sent)."""
    token = from_env or (login.token if login else "")
    claims = unverified_claims(token)
    username, expires_at = _text(claims.get("sub")), claims.get("exp")
    if not isinstance(expires_at, int) or isinstance(expires_at, bool):
        expires_at = None
    if not from_env and login is not None:  # what the login noted beats what the token says
        username = login.username or username
        expires_at = login.expires_at if login.expires_at is not None else expires_at
    return {
        "server": origin,
        "token_source": "SPECAI_TOKEN" if from_env else "tokens.json",
        "token_kind": "api_key" if token.startswith(API_KEY_PREFIX) else "login" if claims else "unknown",
        "username": username,
        "role": _text(claims.get("role")),  # no specai token carries one today: None
        "expires_at": utc_stamp(expires_at),
        "expired": expires_at is not None and expires_at <= time.time(),
        "fingerprint": KnownServers(home_dir()).get(origin),
    }


def _show(facts: dict[str, Any]) -> None:
    source = "from SPECAI_TOKEN" if facts["token_source"] == "SPECAI_TOKEN" else "saved by specai login"
    kind = {"api_key": "API key", "login": "login token"}.get(facts["token_kind"], "token")
    user = facts["username"] or (
        "not known here (an API key names its owner only to the server)"
        if facts["token_kind"] == "api_key"
        else "not known here"
    )
    role = facts["role"]
    stamp = facts["expires_at"]
    expires = "not known here" if stamp is None else until(int(dt.datetime.fromisoformat(stamp).timestamp()))
    pin = facts["fingerprint"] or "not pinned (the next command asks, or pass --fingerprint)"
    out.print(f"server       {facts['server']}")
    out.print(f"user         {user}")
    if role:
        out.print(f"role         {role} (as the token says; only the server decides)")
    else:
        out.print("role         not known here (the token does not carry it; no server route tells it yet)")
    out.print(f"token        {kind}, {source}")
    out.print(f"expires      {expires}")
    out.print(f"fingerprint  {pin}")


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of a JWT, read WITHOUT checking its signature: for showing, never for deciding anything."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, TypeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _stamp(epoch: int | None) -> str | None:
    return (
        None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")
    )
