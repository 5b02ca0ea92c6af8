"""`specai graph sessions`, `share` and `unshare`: whose graph sessions you see, and who sees yours."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from specai.cli._client import FingerprintOption, JsonOption, ServerOption, open_client
from specai.cli._console import handle_errors, out, print_json
from specai.cli.graph.listing import graph_table
from specai.cli.graph.options import SessionArgument, UserArgument
from specai.config import DEFAULT_SERVER_URL


@handle_errors
def sessions(
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the graph sessions you own or that are shared with you, with their owner and your access.

    A session belongs to whoever first writes to it (or watches or bootstraps it); others see it only once it is
    shared with them.

    Examples:

      specai graph sessions

      specai graph sessions --json
    """
    with open_client(server, fingerprint) as client:
        body = client.graph_sessions()
    if json_output:
        print_json(body)
        return
    if not body.sessions:
        out.print("no graph sessions yet (the first node you add to a session makes it yours)", markup=False)
        return
    table = graph_table("session", "owner", "access")
    for entry in body.sessions:
        table.add_row(Text(entry.session_id), Text(entry.owner), entry.access)
    out.print(table)


@handle_errors
def share(
    session: SessionArgument,
    username: UserArgument,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="They may read the session but not change it (403).")
    ] = False,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """Share a graph session you own with another user (read-write, or read-only with --read-only).

    Sharing again changes their access; only the owner (or an admin) can share.

    Examples:

      specai graph share research bob

      specai graph share research carol --read-only
    """
    with open_client(server, fingerprint) as client:
        body = client.share_graph(session, username, read_only=read_only)
    if json_output:
        print_json(body)
        return
    access = "read-only" if body.access == "read" else "read-write"
    out.print(f"shared graph session {body.session_id} with {body.username} ({access})", markup=False)


@handle_errors
def unshare(
    session: SessionArgument,
    username: UserArgument,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """Stop sharing a graph session with a user; their open `graph watch` ends at the next change.

    Example:

      specai graph unshare research bob
    """
    with open_client(server, fingerprint) as client:
        body = client.unshare_graph(session, username)
    if json_output:
        print_json(body)
        return
    out.print(f"graph session {body.session_id} is no longer shared with {body.unshared}", markup=False)
