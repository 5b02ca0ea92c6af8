"""Commands that talk to a running server: login, logout, health, agents, query."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table

from specai.cli import _prompt
from specai.cli._client import FingerprintOption, JsonOption, ServerOption, check_server_url, open_client
from specai.cli._console import AUTH_FAILURE, USAGE, err, fail, handle_errors, out, print_json
from specai.cli._duration import in_words
from specai.cli._render import StreamRenderer
from specai.config import DEFAULT_SERVER_URL, home_dir
from specai.errors import RemoteError, SpecaiError
from specai.identity.trust import LastSessions, SavedTokens, parse_server

if TYPE_CHECKING:
    from specai.client import SpecaiClient

THROTTLED = "too_many_attempts"  # the server's code for a login lockout (429, with details.retry_after)
MAX_TEMPERATURE = 2.0  # the range the server accepts (agents.runtime)


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
        try:
            body = client.login(name, password)
        except RemoteError as exc:
            if exc.http_status == 429 and exc.remote_code == THROTTLED:
                fail(_locked_out(client.server.origin, exc), AUTH_FAILURE)
            raise
    origin = client.server.origin
    expires_at = int(time.time()) + body.expires_in
    SavedTokens(home_dir()).set(origin, {"token": body.token, "username": name, "expires_at": expires_at})
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(expires_at))
    out.print(f"logged in to {origin} as {name} (token valid until {until})")


def _locked_out(origin: str, exc: RemoteError) -> str:
    """The lockout in words: how long to wait, from the server's `retry_after` (also its Retry-After header)."""
    wait = exc.details.get("retry_after") if isinstance(exc.details, dict) else None
    when = f"try again in {in_words(wait)}" if isinstance(wait, int) else "try again later"
    return f"{origin} refuses logins for now after too many failed attempts: {when}"


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
    message: Annotated[str, typer.Argument(help="What to ask the agent; - reads it from stdin.")],
    server: ServerOption = DEFAULT_SERVER_URL,
    agent: Annotated[
        Optional[str], typer.Option("--agent", "-a", help="Agent id (default: the server's default agent).")
    ] = None,
    session: Annotated[
        Optional[str], typer.Option("--session", help="Session id to continue (it must exist; see --new).")
    ] = None,
    new: Annotated[
        bool, typer.Option("--new", help="Start the session given with --session (that id must be unused).")
    ] = False,
    continue_: Annotated[
        bool, typer.Option("--continue", help="Continue the last session used with this server.")
    ] = False,
    system: Annotated[
        Optional[str],
        typer.Option(
            "--system", help="An extra system prompt for this query (after the agent's; not stored)."
        ),
    ] = None,
    temperature: Annotated[
        Optional[float],
        typer.Option("--temperature", help="Sampling temperature, 0 to 2 (default: the agent's)."),
    ] = None,
    max_tokens: Annotated[
        Optional[int],
        typer.Option("--max-tokens", help="Longest answer in tokens, 1 or more (default: the agent's)."),
    ] = None,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Wait for the whole answer (POST /query).")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the QueryResponse JSON (implies --no-stream).")
    ] = False,
    fingerprint: FingerprintOption = None,
    a2a: Annotated[
        Optional[str],
        typer.Option(
            "--a2a",
            help="Ask the A2A agent at this https URL instead (any A2A agent; pinned like --server).",
            callback=check_server_url,
        ),
    ] = None,
) -> None:
    """Ask an agent; the answer streams to the terminal as it is produced.

    `--session ID` continues that session and refuses an id the server does not have (a typo would otherwise
    start a new conversation silently); `--session ID --new` starts a session with that id.

    Examples:

      specai query "hello"

      specai query "and then?" --continue

      git diff | specai query - --system "You review code. Be brief." --max-tokens 400

      specai query "summarise" --agent writer --session notes-1 --new --no-stream --json

      specai query --a2a https://agent.example:8443 "hi"
    """
    if a2a is not None:
        from specai.cli.a2a import query_a2a

        specai_only: dict[str, object] = {
            "--session": session,
            "--continue": continue_ or None,
            "--new": new or None,
        }
        specai_only |= {"--system": system, "--temperature": temperature, "--max-tokens": max_tokens}
        given = [name for name, value in specai_only.items() if value is not None]
        query_a2a(
            a2a,
            message,
            given,
            agent=agent,
            stream=not no_stream,
            fingerprint=fingerprint,
            json_output=json_output,
        )
        return
    _check_query_options(session, new, continue_, temperature, max_tokens)
    if message == "-":
        message = _stdin_message()
    origin = parse_server(server).origin
    last = LastSessions(home_dir())
    if continue_:
        session = last.get(origin)
        if not session:
            fail(f"no earlier session with {origin}; run a query first", USAGE)
    fields: dict[str, Any] = {"agent": agent, "session_id": session, "system": system}
    fields |= {"temperature": temperature, "max_tokens": max_tokens}
    with open_client(server, fingerprint) as client:
        if session and not continue_:
            _check_session(client, session, new=new)
        if json_output or no_stream:
            body = client.query(message, **fields)
            last.set(origin, body.session_id)
            if json_output:
                print_json(body)
            else:
                out.print(body.response, markup=False)
                err.print(f"session {body.session_id} (continue with --continue)", style="dim")
            return
        _stream(client.stream(message, **fields), last, origin)


def _check_query_options(
    session: str | None, new: bool, continue_: bool, temperature: float | None, max_tokens: int | None
) -> None:
    """Usage errors (exit 2) before anything is read or sent."""
    if session and continue_:
        fail("--session and --continue are alternatives: give one", USAGE)
    if new and not session:
        fail(
            "--new needs --session ID (the id of the session to start; without both, a query starts one)",
            USAGE,
        )
    if temperature is not None and not 0 <= temperature <= MAX_TEMPERATURE:
        fail(f"--temperature must be from 0 to {MAX_TEMPERATURE:g} (got {temperature:g})", USAGE)
    if max_tokens is not None and max_tokens < 1:
        fail(f"--max-tokens must be 1 or more (got {max_tokens})", USAGE)


def _stdin_message() -> str:
    """The message piped in for `-`: all of stdin, without its final newline."""
    if sys.stdin.isatty():
        err.print("reading the message from the terminal; end it with Ctrl-D", style="dim")
    text = sys.stdin.read()
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        fail("the message on stdin is empty (pipe the message in, e.g. echo 'hello' | specai query -)", USAGE)
    return text


def _check_session(client: SpecaiClient, session: str, *, new: bool) -> None:
    """`--session ID` must name a session the server has (one of the caller's); with --new, one it has not."""
    origin = client.server.origin
    try:
        client.session(session)
    except RemoteError as exc:
        if exc.http_status != 404:
            raise
        if not new:
            fail(f"no session '{session}' on {origin}; pass --new to start one with that id")
        return
    if new:
        fail(f"session '{session}' already exists on {origin}; drop --new to continue it")


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
