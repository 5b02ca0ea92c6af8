"""`specai graph add-node`, `add-edge`, `rm` and `bootstrap`: change a session's graph."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from specai.cli._client import FingerprintOption, JsonOption, ServerOption, open_client
from specai.cli._console import USAGE, err, fail, handle_errors, out, print_json
from specai.cli.graph.options import DEFAULT_SESSION, Kind, PropertiesOption, SessionOption
from specai.config import DEFAULT_SERVER_URL
from specai.errors import RemoteError


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
        out.print(str(node.id))


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
        out.print(str(edge.id))


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
    from specai.server.schemas.graph import EdgeDeletedOut, NodeDeletedOut

    deleted: list[NodeDeletedOut | EdgeDeletedOut] = []
    failed: list[dict[str, Any]] = []
    with open_client(server, fingerprint) as client:
        for entity_id in ids:
            try:
                body = client.delete_node(entity_id) if kind is Kind.node else client.delete_edge(entity_id)
            except RemoteError as exc:
                if exc.http_status != 404:
                    raise
                failed.append({"id": entity_id, "error": exc.message, "code": exc.remote_code})
                err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True, highlight=False)
                continue
            deleted.append(body)
            if not json_output:
                if isinstance(body, NodeDeletedOut):
                    count = body.edges_deleted
                    out.print(f"deleted node {entity_id} and {count} edge{'' if count == 1 else 's'} with it")
                else:
                    out.print(f"deleted edge {entity_id}")
    if json_output:
        print_json({"deleted": deleted, "failed": failed})
    if failed:
        raise typer.Exit(1)


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
    root = body.root_node_id
    out.print(
        f"bootstrapped session {body.session_id}" + (f" (root node {root})" if root is not None else ""),
        markup=False,
    )
    out.print(
        f"nodes: {body.nodes_created} created, {body.nodes_updated} updated, "
        f"{body.nodes_removed} removed; edges: {body.edges_created} created, {body.edges_removed} removed"
    )


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
