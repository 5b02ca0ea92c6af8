"""Commands that talk to a running server: login, logout, health, agents, query."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from specai.cli import _prompt
from specai.cli._client import FingerprintOption, JsonOption, ServerOption, open_client
from specai.cli._console import USAGE, err, fail, handle_errors, out, print_json
from specai.cli._render import StreamRenderer
from specai.config import DEFAULT_SERVER_URL, home_dir
from specai.errors import RemoteError, SpecaiError
from specai.identity.trust import LastSessions, SavedTokens, parse_server


@handle_errors
def login(
    server: ServerOption = DEFAULT_SERVER_URL,
    username: Annotated[
        Optional[str], typer.Option("--username", "-u", help="User to log in as (asked when missing).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin.")
    ] = False,
    fingerprint: FingerprintOption = None,
) -> None:
    """Pin the server's certificate, exchange a password for a token, and save it (0600).

    The certificate is checked before the password is sent.

    Examples:

      specai login --server https://127.0.0.1:3000 --username alice

      printf 'pw\\n' | specai login -s https://host:3000 -u alice --password-stdin --fingerprint AA:BB:...
    """
    with open_client(server, fingerprint, use_saved_token=False) as client:
        name = username or _prompt.ask_username()
        password = _prompt.read_password_stdin() if password_stdin else _prompt.ask_password()
        body = client.login(name, password)
    origin = client.server.origin
    expires_at = int(time.time()) + body.expires_in
    SavedTokens(home_dir()).set(origin, {"token": body.token, "username": name, "expires_at": expires_at})
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(expires_at))
    out.print(f"logged in to {origin} as {name} (token valid until {until})")


@handle_errors
def logout(server: ServerOption = DEFAULT_SERVER_URL, fingerprint: FingerprintOption = None) -> None:
    """Revoke the saved token on the server, then forget it (the pin stays).

    When the server cannot be reached the token is still forgotten here, but it stays valid on the server until
    it expires: the command says so and exits 1.

    Example:

      specai logout --server https://127.0.0.1:3000
    """
    origin = parse_server(server).origin
    saved = SavedTokens(home_dir())
    entry = saved.get(origin)
    if not isinstance(entry, dict) or not entry.get("token"):
        out.print(f"not logged in to {origin}")
        return
    problem = None
    try:
        with open_client(server, fingerprint, use_saved_token=False) as client:
            client.token = entry["token"]  # the saved one, even when SPECAI_TOKEN is set
            client.logout()
    except RemoteError as exc:
        if exc.http_status != 401:  # 401: the server no longer honours it anyway
            problem = exc.message
    except SpecaiError as exc:
        problem = exc.message
    saved.remove(origin)
    if problem is not None:
        fail(
            f"forgot the token, but could not revoke it on {origin}: {problem}; it stays valid until it expires"
        )
    out.print(f"logged out of {origin} (token revoked)")


@handle_errors
def health(
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """Check that a server is up.

    Example:

      specai health --json
    """
    with open_client(server, fingerprint) as client:
        body = client.health()
    if json_output:
        print_json(body)
        return
    out.print(
        f"{client.server.origin}: {body.status} (version {body.version}, up {body.uptime_seconds} s, "
        f"{body.active_sessions} sessions)"
    )


@handle_errors
def agents(
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the agents a server offers.

    Example:

      specai agents --server https://127.0.0.1:3000
    """
    with open_client(server, fingerprint) as client:
        body = client.agents()
    if json_output:
        print_json(body)
        return
    table = Table("agent", "provider", "model", "available", "description")
    for agent in body.agents:
        name = agent.id + (" (default)" if agent.default else "")
        available = "yes" if agent.available else f"no: {agent.unavailable_reason or ''}"
        table.add_row(name, agent.provider, agent.model, available, agent.description)
    out.print(table)


@handle_errors
def query(
    message: Annotated[str, typer.Argument(help="What to ask the agent.")],
    server: ServerOption = DEFAULT_SERVER_URL,
    agent: Annotated[
        Optional[str], typer.Option("--agent", "-a", help="Agent id (default: the server's default agent).")
    ] = None,
    session: Annotated[Optional[str], typer.Option("--session", help="Session id to continue.")] = None,
    continue_: Annotated[
        bool, typer.Option("--continue", help="Continue the last session used with this server.")
    ] = False,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Wait for the whole answer (POST /query).")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the QueryResponse JSON (implies --no-stream).")
    ] = False,
    fingerprint: FingerprintOption = None,
) -> None:
    """Ask an agent; the answer streams to the terminal as it is produced.

    Examples:

      specai query "hello"

      specai query "and then?" --continue

      specai query "summarise" --agent writer --no-stream --json
    """
    if session and continue_:
        fail("--session and --continue are alternatives: give one", USAGE)
    origin = parse_server(server).origin
    last = LastSessions(home_dir())
    if continue_:
        session = last.get(origin)
        if not session:
            fail(f"no earlier session with {origin}; run a query first", USAGE)
    with open_client(server, fingerprint) as client:
        if json_output or no_stream:
            body = client.query(message, agent=agent, session_id=session)
            last.set(origin, body.session_id)
            if json_output:
                print_json(body)
            else:
                out.print(body.response, markup=False)
                err.print(f"session {body.session_id} (continue with --continue)", style="dim")
            return
        _stream(client.stream(message, agent=agent, session_id=session), last, origin)


def _stream(events: Iterator[dict[str, Any]], last: LastSessions, origin: str) -> None:
    session_id = None
    renderer = StreamRenderer()
    try:
        for event in events:
            kind = event.get("type")
            if kind == "start":
                session_id = event["session_id"]
            elif kind == "chunk":
                renderer.chunk(event["text"])
            elif kind == "tool_call":
                renderer.tool_call(event["name"], event.get("arguments"))
            elif kind == "tool_result":
                renderer.tool_result(event["name"], event.get("result", {}))
            elif kind == "error":
                renderer.close()
                raise RemoteError(
                    event.get("message", "the agent failed"), status=502, code=event.get("code", "error")
                )
            elif kind == "end" and session_id:
                last.set(origin, session_id)  # only completed turns are stored, so only they can be continued
    finally:
        renderer.close()
    if session_id:
        err.print(f"session {session_id} (continue with --continue)", style="dim")
