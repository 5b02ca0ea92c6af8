"""`specai token` and `specai whoami`: the login this CLI holds for a server, for other tools and for people."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import sys
import time
from typing import Any

from specai.cli._client import (
    FingerprintOption,
    JsonOption,
    SavedLogin,
    ServerOption,
    not_logged_in,
    open_client,
    saved_login,
)
from specai.cli._console import AUTH_FAILURE, ERROR, exit_code_for, fail, handle_errors, out, print_json
from specai.cli._duration import until, utc_stamp
from specai.config import DEFAULT_SERVER_URL, home_dir
from specai.errors import RemoteError, SpecaiError
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
def whoami(
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show whom the CLI is logged in as on a server: user, role, token expiry and the pinned fingerprint.

    The server is asked (over the pinned connection) whom the token speaks for, so the answer is the server's:
    a revoked or expired token says so (exit 4). When the server cannot be reached, what `specai login` saved
    here is shown and the command exits 1.

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
    problem = None
    rejected = False
    try:
        if not facts["expired"]:  # known to be dead: no need to ask
            with open_client(server, fingerprint) as client:
                answer = client.whoami()
            facts.update(username=answer.username, role=answer.role, scope=answer.scope, verified=True)
            facts["fingerprint"] = KnownServers(home_dir()).get(origin)
    except RemoteError as exc:
        if exc.http_status == 404:  # a server older than GET /auth/whoami
            problem = "it does not report roles (a specai server older than this client)"
        elif exc.http_status == 401:
            facts["expired"] = rejected = True  # the server no longer honours it, whatever its date says
        else:
            raise
    except SpecaiError as exc:
        if exit_code_for(exc) != ERROR:  # an untrusted certificate or a bad URL is not "unreachable"
            raise
        problem = exc.message
    if json_output:
        print_json(facts)
    else:
        _show(facts)
    if from_env and facts["expired"]:
        fail(
            "the token in SPECAI_TOKEN is expired or not honoured by the server: set a fresh one, or unset it "
            f"and run specai login --server {origin}",
            AUTH_FAILURE,
        )
    if rejected:
        fail(
            f"{origin} does not honour the saved token (revoked, or its user changed): "
            f"run specai login --server {origin}",
            AUTH_FAILURE,
        )
    if facts["expired"]:
        fail(not_logged_in(origin, login), AUTH_FAILURE)
    if problem is not None:
        fail(f"could not ask {origin} (showing what is saved here): {problem}")


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
        "role": None,  # only the server knows (GET /auth/whoami)
        "scope": None,
        "verified": False,
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
    stamp = facts["expires_at"]
    expires = "not known here" if stamp is None else until(int(dt.datetime.fromisoformat(stamp).timestamp()))
    pin = facts["fingerprint"] or "not pinned (the next command asks, or pass --fingerprint)"
    out.print(f"server       {facts['server']}")
    out.print(f"user         {user}")
    if facts["verified"]:
        out.print(f"role         {facts['role']} (token scope {facts['scope']})")
    else:
        out.print("role         not known (the server was not asked)")
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
