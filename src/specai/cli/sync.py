"""`specai sync ...`: graph sync between mesh members — a session's status and peers, turning it on and off,
pulling now, and the conflicts resolved. Needs a `mesh` or `admin` login on the server."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from specai.cli._client import FingerprintOption, ServerOption, open_client
from specai.cli._console import ERROR, err, fail, handle_errors, out, print_json
from specai.cli._format import clip, local_time
from specai.config import DEFAULT_SERVER_URL

if TYPE_CHECKING:
    from specai.server.schemas.sync import ConflictsOut, PeerOut, SyncStatusOut

DEFAULT_GRAPH = "default"
# peer states that mean the pull did not happen (the coordinator's words)
FAILED = frozenset({"refused", "untrusted", "unreachable", "skew", "not_enabled", "error", "failed"})
STATE_STYLE = {"ok": "green", "pending": "yellow"}

app = typer.Typer(
    help="Graph sync between mesh members: a session's status and peers, enable/disable, pull now, conflicts.",
    no_args_is_help=True,
)

SessionArgument = Annotated[str, typer.Argument(help="The graph session id.", show_default=False)]
GraphOption = Annotated[
    str, typer.Option("--graph", "-g", help="Graph name (a session holds one graph, 'default').")
]


def _json_option(shape: str) -> Any:
    return typer.Option("--json", help=f"Print the server's answer as JSON: {shape}.")


@app.command("status")
@handle_errors
def status(
    session_id: SessionArgument,
    graph: GraphOption = DEFAULT_GRAPH,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[
        bool,
        _json_option(
            "{session_id, graph_name, sync_enabled, vector_clock, last_sync_at, pending_changes, peers, ...}"
        ),
    ] = False,
) -> None:
    """Show a session's sync state on a server: enabled, version vector, last sync, pending changes, and one
    row per peer with its state (ok, refused, untrusted, unreachable, skew, not_enabled, pending) and last error.

    A peer whose certificate does not match its pin (untrusted) or that refuses this server's token (refused)
    is shown in red with the error, and also reported on stderr.

    Examples:

      specai sync status notes

      specai sync status notes --json | jq '.peers[] | {instance_id, state, last_error}'
    """
    from specai.client.sync import SyncClient

    with open_client(server, fingerprint) as client:
        body = SyncClient(client).status(session_id, graph)
    if json_output:
        print_json(body)
        return
    render_status(body)


@app.command("enable")
@handle_errors
def enable(
    session_id: SessionArgument,
    graph: GraphOption = DEFAULT_GRAPH,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[bool, _json_option("{success, message, enabled}")] = False,
) -> None:
    """Turn sync on for a session: what it already holds is offered to the peers, and the server's
    coordinator (`[sync] enabled = true`) pulls it from every live mesh member.

    Enable it on every member that should hold the session; the session must have the same owner (user name)
    on each.

    Examples:

      specai sync enable notes

      specai sync enable notes --server https://10.0.0.2:3000
    """
    _toggle(session_id, graph, True, server, fingerprint, json_output)


@app.command("disable")
@handle_errors
def disable(
    session_id: SessionArgument,
    graph: GraphOption = DEFAULT_GRAPH,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[bool, _json_option("{success, message, enabled}")] = False,
) -> None:
    """Turn sync off for a session on a server: it keeps its graph, and stops serving and taking changes.

    Turning it on again later sends peers what changed meanwhile.

    Examples:

      specai sync disable notes
    """
    _toggle(session_id, graph, False, server, fingerprint, json_output)


@app.command("now")
@handle_errors
def now(
    session_id: SessionArgument,
    graph: GraphOption = DEFAULT_GRAPH,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[bool, _json_option("{session_id, graph_name, peers: [...]}")] = False,
) -> None:
    """Have the server pull the session from every live peer now, instead of at its next interval; prints the
    result for each peer.

    Exit code 1 when any peer could not be pulled from (refused, untrusted, unreachable, skew, not_enabled).
    Needs the server's coordinator (`[sync] enabled = true` in its config).

    Examples:

      specai sync now notes

      specai sync now notes --json | jq '.peers[] | select(.state != "ok")'
    """
    from specai.client.sync import SyncClient

    with open_client(server, fingerprint) as client:
        body = SyncClient(client).now(session_id, graph)
    failed = [peer for peer in body.peers if _failed(peer)]
    if json_output:
        print_json(body)
    elif not body.peers:
        out.print(f"no live peer to pull {body.session_id} from", markup=False)
    else:
        table = Table("peer", "state", "details", "error")
        for peer in body.peers:
            state = str(peer.get("state") or ("ok" if peer.get("ok") is not False else "failed"))
            details = ", ".join(
                f"{key}={_scalar(value)}"
                for key, value in peer.items()
                if key not in ("instance_id", "state", "ok", "error", "last_error") and value is not None
            )
            table.add_row(
                Text(str(peer.get("instance_id", "?"))),
                _state(state),
                Text(details),
                Text(str(peer.get("error") or peer.get("last_error") or "")),
            )
        out.print(table)
    if failed:
        names = ", ".join(str(peer.get("instance_id", "?")) for peer in failed)
        fail(f"{len(failed)} of {len(body.peers)} peers could not be pulled from: {names}", ERROR)


@app.command("conflicts")
@handle_errors
def conflicts(
    session_id: Annotated[
        Optional[str],
        typer.Option(
            "--session", help="Only this session's conflicts (default: every session).", show_default=False
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="Page size, newest first (1 to 1000).")
    ] = 100,
    cursor: Annotated[
        Optional[str],
        typer.Option(
            "--cursor", help="Continue after a previous page (its `next_cursor`).", show_default=False
        ),
    ] = None,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[bool, _json_option("{conflicts: [...], next_cursor}")] = False,
) -> None:
    """List the concurrent writes the server resolved, newest first: the field, both values, and which won.

    Concurrent writes to the same field resolve to the same winner on every member (the later hybrid logical
    clock stamp); each overwrite of a concurrent value is listed once per member.

    Examples:

      specai sync conflicts --session notes

      specai sync conflicts --limit 20 --cursor 1234
    """
    from specai.client.sync import SyncClient

    with open_client(server, fingerprint) as client:
        body = SyncClient(client).conflicts(session_id, limit, cursor)
    if json_output:
        print_json(body)
        return
    render_conflicts(body)


# --- rendering ----------------------------------------------------------------------------------------------------


def render_status(body: SyncStatusOut) -> None:
    """A session's sync state for a person; failing peers are also named on stderr."""
    enabled = Text("enabled", style="green") if body.sync_enabled else Text("disabled", style="yellow")
    if not body.sync_enabled:
        enabled.append(f" (turn it on: specai sync enable {body.session_id})", style="dim")
    coordinator = (
        Text("running")
        if body.coordinator_running
        else Text("not running on this server ([sync] enabled = false): peers are not pulled", style="yellow")
    )
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column(overflow="fold")
    summary.add_row("session", Text(f"{body.session_id} (graph {body.graph_name})"))
    summary.add_row("server", Text(body.instance_id))
    summary.add_row("sync", enabled)
    summary.add_row("coordinator", coordinator)
    summary.add_row("vector", Text(_vector(body.vector_clock.versions) or "nothing held yet"))
    summary.add_row("last sync", Text(local_time(body.last_sync_at, seconds=True) or "never"))
    summary.add_row(
        "pending", Text(f"{body.pending_changes} change{'' if body.pending_changes == 1 else 's'}")
    )
    out.print(summary)
    if not body.peers:
        out.print("no peers yet", markup=False)
        return
    table = Table("peer", "state", "last error", "last ok", "next try", "their vector", "reported", "pulled")
    for peer in body.peers:
        table.add_row(
            Text(peer.instance_id),
            _state(peer.state or "-"),
            Text(peer.last_error or "", style="red" if peer.last_error else ""),
            local_time(peer.last_ok_at),
            local_time(peer.next_try_at),
            Text(_vector(peer.their_vector.versions)),
            local_time(peer.reported_at),
            local_time(peer.pulled_at),
        )
    out.print(table)
    for peer in body.peers:
        if peer.state in FAILED:
            _warn_peer(peer)


def render_conflicts(body: ConflictsOut) -> None:
    """A page of conflicts for a person, and how to get the next one."""
    if not body.conflicts:
        out.print("no conflicts", markup=False)
    else:
        table = Table("detected", "session", "entity", "field", "resolution", "local", "remote")
        for c in body.conflicts:
            table.add_row(
                local_time(c.detected_at, seconds=True),
                Text(c.session_id),
                Text(f"{c.entity_type} {c.entity_id}"),
                Text(c.field),
                Text(c.resolution),
                Text(clip(json.dumps(c.local_version, ensure_ascii=False), 30)),
                Text(clip(json.dumps(c.remote_version, ensure_ascii=False), 30)),
            )
        out.print(table)
    if body.next_cursor:
        err.print(f"more: specai sync conflicts --cursor {body.next_cursor}", style="dim", markup=False)


def _toggle(
    session_id: str, graph: str, enabled: bool, server: str, fingerprint: str | None, json_output: bool
) -> None:
    from specai.client.sync import SyncClient

    with open_client(server, fingerprint) as client:
        body = SyncClient(client).enable(session_id, enabled, graph)
    if json_output:
        print_json(body)
    else:
        out.print(body.message, markup=False)


def _warn_peer(peer: PeerOut) -> None:
    why = f": {peer.last_error}" if peer.last_error else ""
    err.print(f"peer {peer.instance_id} is {peer.state}{why}", style="red", markup=False)


def _state(state: str) -> Text:
    return Text(state, style="bold red" if state in FAILED else STATE_STYLE.get(state, ""))


def _failed(peer: dict[str, Any]) -> bool:
    return peer.get("state") in FAILED or peer.get("ok") is False


def _vector(versions: dict[str, int]) -> str:
    return ", ".join(f"{origin}: {seq}" for origin, seq in sorted(versions.items()))


def _scalar(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
