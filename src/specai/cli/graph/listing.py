"""`specai graph nodes`, `edges` and `show`: read a session's graph a page at a time, or one entity whole."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Optional, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from specai.cli._client import FingerprintOption, JsonOption, ServerOption, open_client
from specai.cli._console import err, handle_errors, out, print_json
from specai.cli._format import clip, local_time
from specai.cli.graph.options import (
    DEFAULT_SESSION,
    AllOption,
    CursorOption,
    Kind,
    LimitOption,
    SessionOption,
)
from specai.config import DEFAULT_SERVER_URL

if TYPE_CHECKING:
    from specai.server.schemas.graph import EdgeOut, EdgePageOut, NodeOut, NodePageOut

Item = TypeVar("Item")


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
            lambda c: _nodes(client.graph_nodes(session, node_type=node_type, limit=limit, cursor=c)),
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
        table = graph_table("id", "type", "label", "properties", "updated")
        for node in items:
            table.add_row(
                str(node.id),
                node.node_type,
                Text(clip(node.label)),
                Text(_summary(node.properties)),
                local_time(node.updated_at),
            )
        out.print(table)
    _hint(next_cursor, ["nodes", *_session_args(session), *_opt("--type", node_type)], limit)


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
            lambda c: _edges(
                client.graph_edges(
                    session, edge_type=edge_type, source_id=source, target_id=target, limit=limit, cursor=c
                )
            ),
            cursor,
            all_pages,
        )
    if json_output:
        print_json({"edges": items, "count": len(items), "next_cursor": next_cursor})
        return
    if not items:
        out.print(f"no matching edges in session {session}", markup=False)
    else:
        table = graph_table("id", "type", "source -> target", "predicate", "weight", "properties", "updated")
        for edge in items:
            table.add_row(
                str(edge.id),
                edge.edge_type,
                f"{edge.source_id} -> {edge.target_id}",
                Text(clip(edge.predicate or "")),
                f"{edge.weight:g}",
                Text(_summary(edge.properties)),
                local_time(edge.updated_at),
            )
        out.print(table)
    filters = [*_opt("--type", edge_type), *_opt("--source", source), *_opt("--target", target)]
    _hint(next_cursor, ["edges", *_session_args(session), *filters], limit)


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
    import msgspec

    for key, value in msgspec.to_builtins(body).items():
        shown = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
        out.print(f"{key + ':':<12} {shown}", markup=False)


def _pages(
    fetch: Callable[[str | None], tuple[list[Item], str | None]], cursor: str | None, all_pages: bool
) -> tuple[list[Item], str | None]:
    items: list[Item] = []
    while True:
        page, cursor = fetch(cursor)
        items.extend(page)
        if not all_pages or not cursor:
            return items, cursor


def _nodes(page: NodePageOut) -> tuple[list[NodeOut], str | None]:
    return page.nodes, page.next_cursor


def _edges(page: EdgePageOut) -> tuple[list[EdgeOut], str | None]:
    return page.edges, page.next_cursor


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


def graph_table(*columns: str) -> Table:
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
