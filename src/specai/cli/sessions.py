"""`specai sessions ...`: list, show and remove your conversations on a server."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from specai.cli._client import FingerprintOption, JsonOption, ServerOption, open_client
from specai.cli._console import handle_errors, out, print_json
from specai.config import DEFAULT_SERVER_URL

app = typer.Typer(help="Your conversations on a server.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_sessions(
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many, newest first.")] = 100,
    json_output: JsonOption = False,
) -> None:
    """List your sessions, most recently used first.

    Example:

      specai sessions list --json
    """
    with open_client(server, fingerprint) as client:
        body = client.sessions(limit)
    if json_output:
        print_json(body)
        return
    if not body.sessions:
        out.print("no sessions yet; `specai query` starts one")
        return
    table = Table("session", "agent", "messages", "last used")
    for session in body.sessions:
        table.add_row(session.id, session.agent, str(session.message_count), session.updated_at)
    out.print(table)


@app.command("show")
@handle_errors
def show(
    session_id: Annotated[str, typer.Argument(help="Session id (see `specai sessions list`).")],
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show a session's messages.

    Example:

      specai sessions show 4dccfda6-c232-4e67-afe4-863ed7c7b94e
    """
    with open_client(server, fingerprint) as client:
        body = client.session(session_id)
    if json_output:
        print_json(body)
        return
    out.print(f"session {body.id} with agent {body.agent}", style="bold")
    for message in body.messages:
        role = message.role
        for call in message.tool_calls or []:
            out.print(f"[dim]{role} calls {call['name']}({call.get('arguments', {})})[/]")
        if message.content:
            out.print(f"[bold]{role}:[/] ", end="")
            out.print(message.content, markup=False)


@app.command("rm")
@handle_errors
def remove(
    session_id: Annotated[str, typer.Argument(help="Session id to delete.")],
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
) -> None:
    """Delete a session and its messages.

    Example:

      specai sessions rm 4dccfda6-c232-4e67-afe4-863ed7c7b94e
    """
    with open_client(server, fingerprint) as client:
        client.delete_session(session_id)
    out.print(f"deleted session {session_id}")
