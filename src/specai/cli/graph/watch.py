"""`specai graph watch`: a session's changes, one line each as they happen, across reconnections."""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from specai.cli._client import FingerprintOption, ServerOption, open_client
from specai.cli._console import err, handle_errors, warn
from specai.cli.graph.options import DEFAULT_SESSION, SessionOption
from specai.config import DEFAULT_SERVER_URL

if TYPE_CHECKING:
    from specai.client import SpecaiClient


@handle_errors
def watch(
    session: SessionOption = DEFAULT_SESSION,
    since: Annotated[
        Optional[int],
        typer.Option(
            "--since", min=0, help="Replay the changes after this changelog id first (default: now)."
        ),
    ] = None,
    idle_timeout: Annotated[
        float,
        typer.Option(
            "--idle-timeout",
            min=1,
            help="Reconnect when nothing (not even a keep-alive) arrives for this many seconds.",
        ),
    ] = 60.0,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print each change as one JSON object per line (JSON Lines).")
    ] = False,
) -> None:
    """Follow a session's changes as they happen, one line each, until Ctrl-C.

    A dropped connection or a restarting server is followed by reconnection (0.5 s to 5 s apart) that resumes
    after the last change printed, so no change is missed or printed twice.

    Examples:

      specai graph watch

      specai graph watch --session research --since 0 --json | jq .operation
    """
    try:
        with open_client(server, fingerprint) as client:
            _follow(client, session, since, idle_timeout, json_output)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None


def _follow(
    client: SpecaiClient, session: str, since: int | None, idle_timeout: float, as_json: bool
) -> None:
    """Print changes forever; the client reconnects after any drop, resuming after the last change printed."""
    from specai.client.sse import Change, Opened, Reset, Retrying

    for item in client.follow(session, since, idle_timeout=idle_timeout):
        if isinstance(item, Change):
            _print_change(item.body, as_json)
        elif isinstance(item, Opened):
            if item.reconnected:
                err.print(f"reconnected to {client.server.origin}", style="dim", markup=False)
            else:
                after = "" if item.after is None else f" after change {item.after}"
                err.print(f"watching session {session}{after} (Ctrl-C to stop)", style="dim", markup=False)
        elif isinstance(item, Reset):
            warn(item.message)
        elif isinstance(item, Retrying):
            err.print(f"{item.reason}; reconnecting in {item.delay:g} s…", style="dim", markup=False)


def _print_change(change: dict[str, Any], as_json: bool) -> None:
    line = json.dumps(change, ensure_ascii=False) if as_json else describe_change(change)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def describe_change(change: dict[str, Any]) -> str:
    """One line for a person: `#12 create node 5 entity "Alice"`."""
    data = change.get("data") or {}
    line = f"#{change['id']} {change['operation']} {change['entity_type']} {change['entity_id']}"
    if change["entity_type"] == "node":
        line += f" {data.get('node_type', '?')} {json.dumps(data.get('label', ''), ensure_ascii=False)}"
    else:
        line += f" {data.get('edge_type', '?')} {data.get('source_id', '?')} -> {data.get('target_id', '?')}"
        if data.get("predicate"):
            line += f" {json.dumps(data['predicate'], ensure_ascii=False)}"
    if change["operation"] == "update":
        line += f" (v{change.get('version', '?')})"
    return line
