"""`specai graph ...`: a server's knowledge graph from the terminal — list, add, remove, bootstrap, watch live."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Generator
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from specai.cli._client import FingerprintOption, JsonOption, ServerOption, open_client
from specai.cli._console import USAGE, err, fail, handle_errors, out, print_json, warn
from specai.cli._format import clip, local_time
from specai.config import DEFAULT_SERVER_URL
from specai.errors import ConnectionFailedError, RemoteError

if TYPE_CHECKING:
    from specai.client import SpecaiClient

DEFAULT_SESSION = "default"
BACKOFF_START = 0.5  # seconds before the first reconnection attempt; doubles up to BACKOFF_MAX
BACKOFF_MAX = 5.0

app = typer.Typer(
    help="The knowledge graph on a server: nodes, edges, bootstrap, sharing, and a live feed of changes.",
    no_args_is_help=True,
)

SessionOption = Annotated[
    str, typer.Option("--session", help="Graph session id (every command defaults to 'default').")
]
LimitOption = Annotated[
    int, typer.Option("--limit", min=1, max=1000, help="Page size, newest first (1 to 1000).")
]
CursorOption = Annotated[
    Optional[str], typer.Option("--cursor", help="Continue after a previous page (its `next_cursor`).")
]
AllOption = Annotated[bool, typer.Option("--all", help="Follow the cursors and print every page.")]
PropertiesOption = Annotated[
    Optional[str], typer.Option("--properties", help="Properties as a JSON object, e.g. '{\"age\": 42}'.")
]


class Kind(StrEnum):
    """What `rm` and `show` act on."""

    node = "node"
    edge = "edge"


# --- listing ------------------------------------------------------------------------------------------------------


@app.command("nodes")
@handle_errors
def nodes(
    session: SessionOption = DEFAULT_SESSION,
    node_type: Annotated[
        Optional[str],
        typer.Option("--type", "-t", help="Only nodes of this type (entity, concept, fact, ...)."),
    ] = None,
    limit: LimitOption = 100,
    cursor: CursorOption = None,
    all_pages: AllOption = False,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """List a session's nodes, newest first.

    Examples:

      specai graph nodes

      specai graph nodes --session research --type entity --all --json
    """
    with open_client(server, fingerprint) as client:
        items, next_cursor = _pages(
            lambda c: client.graph_nodes(session, node_type=node_type, limit=limit, cursor=c),
            "nodes",
            cursor,
            all_pages,
        )
    if json_output:
        print_json({"nodes": items, "count": len(items), "next_cursor": next_cursor})
        return
    if not items:
        kind = f" of type {node_type}" if node_type else ""
        out.print(f"no nodes{kind} in session {session}", markup=False)
    else:
        table = _table("id", "type", "label", "properties", "updated")
        for node in items:
            table.add_row(
                str(node["id"]),
                node["node_type"],
                Text(clip(node["label"])),
                Text(_summary(node.get("properties"))),
                local_time(node["updated_at"]),
            )
        out.print(table)
    _hint(next_cursor, ["nodes", *_session_args(session), *_opt("--type", node_type)], limit)


@app.command("edges")
@handle_errors
def edges(
    session: SessionOption = DEFAULT_SESSION,
    edge_type: Annotated[
        Optional[str],
        typer.Option("--type", "-t", help="Only edges of this type (RELATES_TO, PART_OF, ...)."),
    ] = None,
    source: Annotated[Optional[int], typer.Option("--source", help="Only edges from this node id.")] = None,
    target: Annotated[Optional[int], typer.Option("--target", help="Only edges to this node id.")] = None,
    limit: LimitOption = 100,
    cursor: CursorOption = None,
    all_pages: AllOption = False,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """List a session's edges, newest first, optionally by type, source and/or target.

    Examples:

      specai graph edges --source 5

      specai graph edges --type RELATES_TO --all --json
    """
    with open_client(server, fingerprint) as client:
        items, next_cursor = _pages(
            lambda c: client.graph_edges(
                session, edge_type=edge_type, source_id=source, target_id=target, limit=limit, cursor=c
            ),
            "edges",
            cursor,
            all_pages,
        )
    if json_output:
        print_json({"edges": items, "count": len(items), "next_cursor": next_cursor})
        return
    if not items:
        out.print(f"no matching edges in session {session}", markup=False)
    else:
        table = _table("id", "type", "source -> target", "predicate", "weight", "properties", "updated")
        for edge in items:
            table.add_row(
                str(edge["id"]),
                edge["edge_type"],
                f"{edge['source_id']} -> {edge['target_id']}",
                Text(clip(edge.get("predicate") or "")),
                f"{edge['weight']:g}",
                Text(_summary(edge.get("properties"))),
                local_time(edge["updated_at"]),
            )
        out.print(table)
    filters = [*_opt("--type", edge_type), *_opt("--source", source), *_opt("--target", target)]
    _hint(next_cursor, ["edges", *_session_args(session), *filters], limit)


# --- writing ------------------------------------------------------------------------------------------------------


@app.command("add-node")
@handle_errors
def add_node(
    node_type: Annotated[
        str,
        typer.Option(
            "--type", "-t", help="Node type: entity, concept, fact, message, tool_result, event or goal."
        ),
    ],
    label: Annotated[str, typer.Option("--label", "-l", help="The node's label.")],
    session: SessionOption = DEFAULT_SESSION,
    properties: PropertiesOption = None,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the created node as JSON.")] = False,
) -> None:
    """Add a node; prints its id (the whole node with --json).

    Example:

      specai graph add-node --type entity --label Alice --properties '{"role": "author"}'
    """
    props = _parse_properties(properties)
    with open_client(server, fingerprint) as client:
        node = client.create_node(session, node_type, label, props)
    if json_output:
        print_json(node)
    else:
        out.print(str(node["id"]))


@app.command("add-edge")
@handle_errors
def add_edge(
    source: Annotated[int, typer.Option("--source", help="Id of the node the edge starts at.")],
    target: Annotated[int, typer.Option("--target", help="Id of the node the edge points to.")],
    edge_type: Annotated[
        str,
        typer.Option(
            "--type",
            "-t",
            help="Edge type: RELATES_TO, CAUSED_BY, PART_OF, MENTIONS, FOLLOWS_FROM, USES, PRODUCES, "
            "DEPENDS_ON, or a custom NAME.",
        ),
    ],
    session: SessionOption = DEFAULT_SESSION,
    predicate: Annotated[
        Optional[str], typer.Option("--predicate", help="A free-text relation, e.g. 'works with'.")
    ] = None,
    weight: Annotated[
        Optional[float], typer.Option("--weight", help="From 0 to 1 (the server's default is 1).")
    ] = None,
    properties: PropertiesOption = None,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the created edge as JSON.")] = False,
) -> None:
    """Add an edge between two nodes of the session; prints its id (the whole edge with --json).

    Example:

      specai graph add-edge --source 1 --target 2 --type RELATES_TO --predicate "works with" --weight 0.8
    """
    props = _parse_properties(properties)
    with open_client(server, fingerprint) as client:
        edge = client.create_edge(
            session, source, target, edge_type, predicate=predicate, weight=weight, properties=props
        )
    if json_output:
        print_json(edge)
    else:
        out.print(str(edge["id"]))


@app.command("rm")
@handle_errors
def remove(
    kind: Annotated[Kind, typer.Argument(help="node or edge.")],
    ids: Annotated[list[int], typer.Argument(help="One or more ids.")],
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """Delete nodes (with every edge touching them) or edges.

    Every id is tried; a missing one is reported on stderr and makes the exit code 1.
    With --json: {"deleted": [...], "failed": [{"id", "error", "code"}]}.

    Examples:

      specai graph rm node 5

      specai graph rm edge 7 8 9
    """
    deleted: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    with open_client(server, fingerprint) as client:
        remove_one = client.delete_node if kind is Kind.node else client.delete_edge
        for entity_id in ids:
            try:
                body = remove_one(entity_id)
            except RemoteError as exc:
                if exc.http_status != 404:
                    raise
                failed.append({"id": entity_id, "error": exc.message, "code": exc.remote_code})
                err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, highlight=False)
                continue
            deleted.append(body)
            if not json_output:
                if kind is Kind.node:
                    count = int(body.get("edges_deleted", 0))
                    out.print(f"deleted node {entity_id} and {count} edge{'' if count == 1 else 's'} with it")
                else:
                    out.print(f"deleted edge {entity_id}")
    if json_output:
        print_json({"deleted": deleted, "failed": failed})
    if failed:
        raise typer.Exit(1)


@app.command("show")
@handle_errors
def show(
    kind: Annotated[Kind, typer.Argument(help="node or edge.")],
    entity_id: Annotated[int, typer.Argument(help="Its id.")],
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show one node or edge, with all its properties.

    Example:

      specai graph show node 5
    """
    with open_client(server, fingerprint) as client:
        body = client.get_node(entity_id) if kind is Kind.node else client.get_edge(entity_id)
    if json_output:
        print_json(body)
        return
    for key, value in body.items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
        out.print(f"{key + ':':<12} {shown}", markup=False)


@app.command("bootstrap")
@handle_errors
def bootstrap(
    session: SessionOption = DEFAULT_SESSION,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: JsonOption = False,
) -> None:
    """Index the server's repository into a session's graph (POST /bootstrap).

    The server scans its `[graph] bootstrap_root` (default: its working directory). Running it again updates
    the same nodes instead of duplicating them.

    Example:

      specai graph bootstrap --session code --json
    """
    with open_client(server, fingerprint) as client:
        body = client.bootstrap(session)
    if json_output:
        print_json(body)
        return
    root = body.get("root_node_id")
    out.print(
        f"bootstrapped session {body['session_id']}" + (f" (root node {root})" if root is not None else ""),
        markup=False,
    )
    out.print(
        f"nodes: {body['nodes_created']} created, {body['nodes_updated']} updated, "
        f"{body['nodes_removed']} removed; edges: {body['edges_created']} created, "
        f"{body['edges_removed']} removed"
    )


# --- sessions and sharing -----------------------------------------------------------------------------------------

SessionArgument = Annotated[str, typer.Argument(help="Graph session id.")]
UserArgument = Annotated[str, typer.Argument(help="Username of an account on the server.")]


@app.command("sessions")
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
    if not body["sessions"]:
        out.print("no graph sessions yet (the first node you add to a session makes it yours)", markup=False)
        return
    table = _table("session", "owner", "access")
    for entry in body["sessions"]:
        table.add_row(Text(entry["session_id"]), Text(entry["owner"]), entry["access"])
    out.print(table)


@app.command("share")
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
    access = "read-only" if body["access"] == "read" else "read-write"
    out.print(f"shared graph session {body['session_id']} with {body['username']} ({access})", markup=False)


@app.command("unshare")
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
    out.print(f"graph session {body['session_id']} is no longer shared with {body['unshared']}", markup=False)


# --- watching -----------------------------------------------------------------------------------------------------


@app.command("watch")
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
    """Print changes forever, reconnecting with Last-Event-ID after any drop."""
    follower = _Follower(client, session, since, as_json)
    delay = BACKOFF_START
    while True:
        reason = "the server closed the stream"
        try:
            with contextlib.closing(follower.connect(idle_timeout)) as events:
                for kind, event_id, data in events:
                    if kind == "open":
                        follower.opened(event_id)
                        delay = BACKOFF_START
                    elif (stop := follower.event(kind, event_id, data)) is not None:
                        reason = stop
                        break
        except ConnectionFailedError as exc:
            if not follower.connected:
                raise
            reason = exc.message
        except RemoteError as exc:
            if not follower.connected or exc.http_status < 500:
                raise
            reason = exc.message
        err.print(f"{reason}; reconnecting in {delay:g} s…", style="dim", markup=False)
        time.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)


class _Follower:
    """The state of `watch` across connections: the last change printed, and whether it ever connected."""

    def __init__(self, client: SpecaiClient, session: str, since: int | None, as_json: bool) -> None:
        self.client = client
        self.session = session
        self.last_id = since
        self.as_json = as_json
        self.connected = False

    def connect(self, idle_timeout: float) -> Generator[tuple[str, str | None, Any], None, None]:
        return self.client.watch(self.session, self.last_id, idle_timeout=idle_timeout)

    def opened(self, cursor: str | None) -> None:
        """The server accepted the stream; `cursor` is where it starts (used when nothing was seen yet)."""
        if self.last_id is None and cursor is not None:
            self.last_id = int(cursor)
        if self.connected:
            err.print(f"reconnected to {self.client.server.origin}", style="dim", markup=False)
        else:
            after = "" if self.last_id is None else f" after change {self.last_id}"
            err.print(f"watching session {self.session}{after} (Ctrl-C to stop)", style="dim", markup=False)
        self.connected = True

    def event(self, kind: str, event_id: str | None, data: Any) -> str | None:
        """Handle one event; returns why to reconnect when the server is ending the stream."""
        body = data if isinstance(data, dict) else {}
        if kind == "message" and event_id is not None and body:
            change_id = int(event_id)
            if (
                self.last_id is None or change_id > self.last_id
            ):  # never a duplicate, whatever the server does
                _print_change(body, self.as_json)
                self.last_id = change_id
        elif kind == "reset":
            warn(str(body.get("message", "the server restarted the feed")))
            if isinstance(body.get("resume_after"), int):
                self.last_id = body["resume_after"]
        elif kind == "error":
            if body.get("code") == "shutting_down":
                return "the server is shutting down; waiting for it to come back"
            if body.get("code") in (
                "not_found",
                "forbidden",
            ):  # access was taken back: reconnecting cannot help
                code = str(body["code"])
                raise RemoteError(
                    str(body.get("error")), status=404 if code == "not_found" else 403, code=code
                )
            return f"the stream failed: {body.get('error', 'unknown error')}"
        return None


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


# --- helpers ------------------------------------------------------------------------------------------------------


def _parse_properties(text: str | None) -> dict[str, Any] | None:
    """--properties as a JSON object, or a usage error (exit 2) before anything is sent."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        fail(
            f"--properties is not valid JSON ({exc.msg} at column {exc.colno}); e.g. '{{\"age\": 42}}'", USAGE
        )
    if not isinstance(value, dict):
        fail(f"--properties must be a JSON object like '{{\"age\": 42}}', not {type(value).__name__}", USAGE)
    return value


def _pages(
    fetch: Callable[[str | None], dict[str, Any]], key: str, cursor: str | None, all_pages: bool
) -> tuple[list[dict[str, Any]], str | None]:
    items: list[dict[str, Any]] = []
    while True:
        body = fetch(cursor)
        items.extend(body[key])
        cursor = body.get("next_cursor")
        if not all_pages or not cursor:
            return items, cursor


def _hint(next_cursor: str | None, args: list[str], limit: int) -> None:
    if next_cursor:
        limit_args = [] if limit == 100 else ["--limit", str(limit)]
        command = " ".join(["specai", "graph", *args, *limit_args, "--cursor", next_cursor])
        err.print(f"more: {command}  (or --all)", style="dim", markup=False)


def _session_args(session: str) -> list[str]:
    return [] if session == DEFAULT_SESSION else ["--session", _quote(session)]


def _opt(flag: str, value: object) -> list[str]:
    return [] if value is None else [flag, _quote(str(value))]


def _quote(value: str) -> str:
    return shlex.quote(value)


def _table(*columns: str) -> Table:
    """Identifiers, types, numbers and times never wrap; labels and properties take what is left."""
    table = Table()
    for name in columns:
        free = name in ("label", "predicate", "properties")
        table.add_column(name, no_wrap=not free, min_width=10 if free else None, ratio=1 if free else None)
    return table


def _summary(properties: dict[str, Any] | None) -> str:
    if not properties:
        return ""
    parts = [
        f"{key}={value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)}"
        for key, value in properties.items()
    ]
    return clip(", ".join(parts))
