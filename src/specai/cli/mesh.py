"""`specai mesh ...`: the mesh a server belongs to — its members, and the message queue between them."""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer
from rich.table import Table
from rich.text import Text

from specai.cli._client import FingerprintOption, ServerOption, open_client
from specai.cli._console import ERROR, USAGE, err, fail, handle_errors, out, print_json
from specai.cli._format import clip, local_time, parse_time
from specai.config import DEFAULT_SERVER_URL
from specai.errors import RemoteError

if TYPE_CHECKING:
    from specai.client import SpecaiClient
    from specai.server.schemas.mesh import MeshMessageOut

ID_WIDTH = 48  # instance ids up to this long are never folded in the members table
INBOX_PAGE = 1000  # messages asked for per inbox page (the server may send fewer: it also bounds the bytes)
ACK_BATCH = 1000  # the server acknowledges at most this many ids per request
CUSTOM_PREFIX = "custom:"
# heartbeats newer than this are shown as "12 s ago", older ones as a local time
RECENT = dt.timedelta(hours=1)
TYPES_HELP = (
    "Query, Response, Notification, TaskDelegation, TaskResult, GraphSync, CapabilityUpdate, CapabilityQuery, "
    "LearningShare, ProposalSubmit, ProposalVote, WorkflowAssignment, WorkflowStageResult"
)

app = typer.Typer(
    help="The mesh a server belongs to: its members (live or stale, and the leader), and messages between them.",
    no_args_is_help=True,
)

InstanceArgument = Annotated[
    str,
    typer.Argument(help="A member's instance id (see `specai mesh members`).", show_default=False),
]


# --- members ------------------------------------------------------------------------------------------------------


@app.command("members")
@handle_errors
def members(
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the server's answer as is: {instances, leader_id, self_id}.")
    ] = False,
) -> None:
    """List the members the server knows: status (live/stale), leader, address, agents and last heartbeat.

    The server itself is a member and is marked "(this server)"; the leader (the earliest-registered live
    member) is marked ★.

    Examples:

      specai mesh members

      specai mesh members --json | jq -r .leader_id
    """
    with open_client(server, fingerprint) as client:
        body = client.mesh_members()
    if json_output:
        print_json(body)
        return
    instances, self_id, leader_id = body.instances, body.self_id, body.leader_id
    if not instances:
        out.print("no members", markup=False)
        return
    now = dt.datetime.now(dt.UTC)
    widest = max(len(m.instance_id) for m in instances)
    table = _table(
        "instance",
        "status",
        "leader",
        "base URL",
        "agents",
        "last heartbeat",
        "capabilities",
        keep={"instance": min(widest, ID_WIDTH)},
    )
    for member in instances:
        shown = Text(member.instance_id)
        if member.instance_id == self_id:
            shown.append(" (this server)", style="dim")
        table.add_row(
            shown,
            Text(member.status, style="green" if member.status == "live" else "yellow"),
            "★" if member.is_leader or member.instance_id == leader_id else "",
            Text(member.base_url),
            Text(", ".join(member.agent_profiles)),
            _ago(member.last_heartbeat, now),
            Text(", ".join(member.capabilities)),
        )
    out.print(table)
    live = sum(1 for m in instances if m.status == "live")
    plural = "" if len(instances) == 1 else "s"
    leader = f"leader: {leader_id}" if leader_id else "no live member, so no leader"
    out.print(f"{len(instances)} member{plural} ({live} live); {leader}", markup=False)


# --- messages -----------------------------------------------------------------------------------------------------


@app.command("send")
@handle_errors
def send(
    message_type: Annotated[
        str,
        typer.Option(
            "--type",
            "-t",
            help=f"Message type: {TYPES_HELP} (snake_case accepted, e.g. task_delegation), or custom:NAME.",
            show_default=False,
        ),
    ],
    payload: Annotated[
        str,
        typer.Option(
            "--payload",
            "-p",
            help='The payload: any JSON value, e.g. \'{"task": "summarise"}\', \'"text"\', 42 or null.',
            show_default=False,
        ),
    ],
    to: Annotated[
        Optional[str],
        typer.Option("--to", help="The member to send to (or --broadcast).", show_default=False),
    ] = None,
    broadcast: Annotated[
        bool, typer.Option("--broadcast", help="Send to every member except the sender (or --to ID).")
    ] = False,
    source: Annotated[
        Optional[str],
        typer.Option(
            "--from", help="The sending member (default: the server's own instance id).", show_default=False
        ),
    ] = None,
    correlation_id: Annotated[
        Optional[str],
        typer.Option(
            "--correlation-id",
            help="Links a reply to its request (up to 256 characters).",
            show_default=False,
        ),
    ] = None,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the server's answer: {message_id, status, delivered_to}.")
    ] = False,
) -> None:
    """Queue a message for one member (--to) or for every member but the sender (--broadcast).

    Prints the message id and who will receive it. Nothing is stored when the sender or the target is not a
    member, when the type is unknown, or when the payload is over the server's limit.

    Examples:

      specai mesh send --to worker-1 --type task_delegation --payload '{"task": "summarise", "doc": 7}'

      specai mesh send --broadcast --type custom:ping --payload null --correlation-id c-42
    """
    if (to is None) == (not broadcast):
        fail("pass exactly one of --to ID or --broadcast", USAGE)
    kind = _parse_type(message_type)
    value = _parse_payload(payload)
    with open_client(server, fingerprint) as client:
        sender = source if source is not None else client.mesh_members().self_id
        try:
            body = client.mesh_send(sender, kind, value, target=to, correlation_id=correlation_id)
        except RemoteError as exc:
            _explain_send_error(exc, message_type)
    if json_output:
        print_json(body)
        return
    recipients = body.delivered_to
    if not recipients:  # a broadcast from the only member: the server stores nothing
        out.print(
            f"nothing queued: {sender} is the only member, so the broadcast has no recipient", markup=False
        )
        return
    count = len(recipients)
    line = f"queued {body.message_id} for {count} member{'' if count == 1 else 's'}: {', '.join(recipients)}"
    out.print(line, markup=False)


@app.command("inbox")
@handle_errors
def inbox(
    instance_id: InstanceArgument,
    limit: Annotated[
        int,
        typer.Option("--limit", min=1, help="Show at most this many messages (pages are followed up to it)."),
    ] = 1000,
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print {messages: [...], more: bool} (more: others still wait).")
    ] = False,
) -> None:
    """List the messages waiting for a member (not yet acknowledged by it), oldest first.

    The server answers in bounded pages; they are followed until --limit messages are shown, and a note says
    when more are waiting. Reading does not remove them: `specai mesh ack` does.

    Examples:

      specai mesh inbox worker-1

      specai mesh inbox worker-1 --json | jq -r '.messages[].message_id'
    """
    with open_client(server, fingerprint) as client:
        messages, more = read_inbox(client, instance_id, limit)
    if json_output:
        print_json({"messages": messages, "more": more})
        return
    if not messages:
        out.print(f"no messages for {instance_id}", markup=False)
        return
    correlated = any(m.correlation_id for m in messages)
    columns = (
        ["message id", "from", "type", "created"] + (["correlation"] if correlated else []) + ["payload"]
    )
    table = _table(*columns, keep={"message id": max(len(m.message_id) for m in messages)})
    for message in messages:
        row: list[Any] = [
            message.message_id,
            Text(message.source_instance),
            Text(show_type(message.message_type)),
            local_time(message.created_at, seconds=True),
        ]
        if correlated:
            row.append(Text(message.correlation_id or ""))
        row.append(Text(_summary(message.payload)))
        table.add_row(*row)
    out.print(table)
    count = len(messages)
    err.print(
        f"{count} message{'' if count == 1 else 's'}; acknowledge with: specai mesh ack {instance_id} MESSAGE_ID...",
        style="dim",
        markup=False,
    )
    if more:
        err.print(
            f"more messages are waiting for {instance_id}: acknowledge these, or pass a larger --limit",
            markup=False,
        )


@app.command("ack")
@handle_errors
def ack(
    instance_id: InstanceArgument,
    message_ids: Annotated[
        list[str],
        typer.Argument(help="One or more message ids (see `specai mesh inbox`).", show_default=False),
    ],
    server: ServerOption = DEFAULT_SERVER_URL,
    fingerprint: FingerprintOption = None,
    json_output: Annotated[
        bool,
        typer.Option("--json", help='Print {"instance_id", "acknowledged": [...], "not_found": [...]}.'),
    ] = False,
) -> None:
    """Acknowledge messages for one member: they leave its inbox only (other recipients keep theirs).

    An id that is not waiting in that inbox (already acknowledged, or never sent to it) is reported on stderr
    and makes the exit code 1; the others are still acknowledged.

    Examples:

      specai mesh ack worker-1 6f1c0f52-8d1e-4c55-9d43-0f9a6f7f2b10

      specai mesh inbox worker-1 --json | jq -r '.messages[].message_id' | xargs specai mesh ack worker-1
    """
    wanted = list(dict.fromkeys(message_ids))
    with open_client(server, fingerprint) as client:
        waiting, _ = read_inbox(client, instance_id, 10**9, set(wanted))
        present = {m.message_id for m in waiting}
        for start in range(0, len(wanted), ACK_BATCH):
            client.mesh_ack(instance_id, wanted[start : start + ACK_BATCH])
    acknowledged = [m for m in wanted if m in present]
    missing = [m for m in wanted if m not in present]
    if json_output:
        print_json({"instance_id": instance_id, "acknowledged": acknowledged, "not_found": missing})
    else:
        count = len(acknowledged)
        out.print(f"acknowledged {count} message{'' if count == 1 else 's'} for {instance_id}", markup=False)
    if missing:
        fail(
            f"not in {instance_id}'s inbox (already acknowledged, or never sent to it): {', '.join(missing)}",
            ERROR,
        )


# --- helpers ------------------------------------------------------------------------------------------------------


def read_inbox(
    client: SpecaiClient, instance_id: str, limit: int, wanted: set[str] | None = None
) -> tuple[list[MeshMessageOut], bool]:
    """Follow the server's inbox pages until `limit` messages (or until every id in `wanted` was seen); returns
    them and whether more are waiting."""
    messages: list[MeshMessageOut] = []
    after: str | None = None
    while True:
        page = client.mesh_inbox(instance_id, limit=min(INBOX_PAGE, limit - len(messages)), after=after)
        messages += page.messages
        more, after = page.more, page.cursor
        seen = wanted is not None and wanted <= {m.message_id for m in messages}
        if not more or not after or len(messages) >= limit or seen:
            return messages, more


def _table(*columns: str, keep: dict[str, int] | None = None) -> Table:
    """Narrow terminals fold long values onto more lines rather than cutting them; the `keep` columns (ids,
    which must stay copyable) get at least their given width."""
    table = Table()
    for name in columns:
        table.add_column(name, overflow="fold", min_width=(keep or {}).get(name))
    return table


def _parse_type(text: str) -> str | dict[str, str]:
    """`--type`: a name as the server knows it, or `custom:NAME` for `{"Custom": "NAME"}`."""
    if text[: len(CUSTOM_PREFIX)].lower() == CUSTOM_PREFIX:
        name = text[len(CUSTOM_PREFIX) :]
        if not name:
            fail("--type custom:NAME needs a name after 'custom:', e.g. custom:ping", USAGE)
        return {"Custom": name}
    if not text:
        fail(f"--type must not be empty; use one of {TYPES_HELP}, or custom:NAME", USAGE)
    return text


def _parse_payload(text: str) -> Any:
    """`--payload` as any JSON value, or a usage error (exit 2) before anything is sent."""

    def reject(constant: str) -> NoReturn:
        fail(
            f'--payload is not valid JSON ({constant} is not allowed); e.g. \'{{"task": "summarise"}}\'',
            USAGE,
        )

    try:
        return json.loads(text, parse_constant=reject)
    except json.JSONDecodeError as exc:
        fail(
            f"--payload is not valid JSON ({exc.msg} at column {exc.colno}); "
            f'e.g. \'{{"task": "summarise"}}\' or \'"a string"\' (quoted)',
            USAGE,
        )


def _explain_send_error(exc: RemoteError, given: str) -> NoReturn:
    """An unknown type gets the CLI's own spelling of the choices; every other error is the server's."""
    valid = exc.details.get("valid") if isinstance(exc.details, dict) else None
    if exc.remote_code == "unprocessable" and isinstance(valid, list) and valid:
        fail(
            f"--type {given!r} is not a message type; use one of {', '.join(map(str, valid))} "
            "(snake_case accepted), or custom:NAME",
            ERROR,
        )
    raise exc


def show_type(kind: Any) -> str:
    """A message type for a person: `TaskDelegation`, or `custom:NAME` for `{"Custom": "NAME"}`."""
    if isinstance(kind, dict) and len(kind) == 1:
        (key, value), *_ = kind.items()
        if str(key).lower() == "custom":
            return f"{CUSTOM_PREFIX}{value}"
    return kind if isinstance(kind, str) else json.dumps(kind, ensure_ascii=False)


def _summary(payload: Any) -> str:
    return clip(payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False))


def _ago(stamp: Any, now: dt.datetime) -> str:
    """`3 s ago`, `12 min ago` within the hour, else the local time."""
    moment = parse_time(stamp)
    if moment is None:
        return str(stamp or "")
    age = now - moment
    if age >= RECENT:
        return moment.astimezone().strftime("%Y-%m-%d %H:%M")
    seconds = max(0, int(age.total_seconds()))
    return f"{seconds} s ago" if seconds < 60 else f"{seconds // 60} min ago"
