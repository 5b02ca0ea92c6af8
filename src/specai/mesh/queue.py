"""The mesh message queue: durable messages with delivery state per recipient, bounded per recipient and per read."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, case, delete, exists, func, insert, select, true
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    QuotaExceededError,
    UnknownInstanceError,
    UnprocessableError,
)
from specai.mesh.registry import authorize, check_actor
from specai.store import Store
from specai.store.lease import Fence
from specai.store.schema import mesh_deliveries, mesh_members, mesh_messages
from specai.store.types import utcnow
from specai.users.access import Principal

INBOX_PAGE = 100  # messages per inbox page unless asked otherwise
INBOX_MAX_PAGE = 1000
MAX_ACK = 1000  # message ids per acknowledgement
MAX_MESSAGE_ID = 64
_CURSOR = re.compile(r"[0-9]{1,18}")  # ASCII digits only (int() would also take '²' or Arabic-Indic digits)
_STREAM_ROWS = 16  # rows fetched at a time while filling a page
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MESSAGE_TYPES = (
    "Query",
    "Response",
    "Notification",
    "TaskDelegation",
    "TaskResult",
    "GraphSync",
    "CapabilityUpdate",
    "CapabilityQuery",
    "LearningShare",
    "ProposalSubmit",
    "ProposalVote",
    "WorkflowAssignment",
    "WorkflowStageResult",
)
_BY_SNAKE = {re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower(): name for name in MESSAGE_TYPES}


def parse_message_type(value: Any) -> str | dict[str, str]:
    """The wire form of a message type: a PascalCase name (snake_case accepted) or `{"Custom": "name"}`."""
    if isinstance(value, str):
        name = value if value in MESSAGE_TYPES else _BY_SNAKE.get(value)
        if name is not None:
            return name
    if (
        isinstance(value, dict)
        and set(value) == {"Custom"}
        and isinstance(value["Custom"], str)
        and value["Custom"]
    ):
        return {"Custom": value["Custom"]}
    if (
        isinstance(value, dict)
        and set(value) == {"custom"}
        and isinstance(value["custom"], str)
        and value["custom"]
    ):
        return {"Custom": value["custom"]}
    raise UnprocessableError(
        f"message_type {value!r} is not one of {', '.join(MESSAGE_TYPES)} (or snake_case), "
        'nor {"Custom": "name"}',
        details={"valid": list(MESSAGE_TYPES)},
    )


@dataclass(frozen=True)
class AgentMessage:
    """A queued message, in the original's shape."""

    message_id: str
    source_instance: str
    target_instance: str | None
    message_type: str | dict[str, str]
    payload: Any
    correlation_id: str | None
    created_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        """`{message_id, source_instance, target_instance, message_type, payload, correlation_id, created_at}`."""
        return {**self.__dict__, "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class InboxPage:
    """One bounded page of an inbox; `cursor` (when `more`) is the `after` that reads the next page."""

    messages: list[AgentMessage]
    more: bool
    cursor: str | None


def parse_cursor(value: Any) -> int | None:
    """`after=`: the cursor a previous page returned (ASCII digits), or None for the first page."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _CURSOR.fullmatch(value):
        raise InvalidRequestError("after must be the cursor a previous page returned (digits only)")
    return int(value)


def _owned(recipient: str, actor: Principal | None) -> ColumnElement[bool]:
    """A condition true only when `actor` may act for `recipient` (an account owns the ids it registered, a peer
    token's identity owns its own id); always true for admins and internal callers."""
    if actor is None or actor.is_admin:
        return true()
    return exists().where(mesh_members.c.instance_id == recipient, mesh_members.c.owner_id == actor.user_id)


def _payload_bytes(payload: Any) -> int:
    return len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())


class MessageQueue:
    """Durable messages with delivery state per recipient: one member's ack removes a message only for it."""

    def __init__(
        self,
        store: Store,
        max_payload_bytes: int,
        max_queued_messages: int = 10_000,
        max_inbox_bytes: int = 1_048_576,
    ) -> None:
        self.store = store
        self.max_payload_bytes = max_payload_bytes
        self.max_queued_messages = max_queued_messages
        self.max_inbox_bytes = max_inbox_bytes

    def _check(self, payload: Any, correlation_id: Any) -> None:
        size = _payload_bytes(payload)
        if size > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"payload is {size} bytes; the limit is {self.max_payload_bytes} ([mesh] max_payload_bytes)"
            )
        if correlation_id is not None and (
            not isinstance(correlation_id, str)
            or len(correlation_id) > 256
            or _CONTROL.search(correlation_id)
        ):
            raise InvalidRequestError(
                "correlation_id must be a string of at most 256 characters, without control characters"
            )

    async def send(
        self,
        source: str,
        target: str | None,
        message_type: Any,
        payload: Any,
        correlation_id: str | None = None,
        actor: Principal | None = None,
    ) -> tuple[AgentMessage, list[str]]:
        """Queue a message for `target`, or for every member but the source (which `actor`, when given, must own);
        nothing is stored on any error, including a recipient whose inbox already holds `max_queued_messages`."""
        kind = parse_message_type(message_type)
        self._check(payload, correlation_id)
        message = AgentMessage(str(uuid.uuid4()), source, target, kind, payload, correlation_id, utcnow())
        async with self.store.transaction() as conn:
            recipients = await self._recipients(conn, source, target, actor)
            if not recipients:  # a broadcast from the only member: nobody could ever acknowledge it
                return message, recipients
            row_id = await conn.scalar(
                insert(mesh_messages)
                .values(
                    message_id=message.message_id,
                    source_instance=source,
                    target_instance=target,
                    message_type=kind,
                    payload=payload,
                    correlation_id=correlation_id,
                    created_at=message.created_at,
                )
                .returning(mesh_messages.c.id)
            )
            await conn.execute(
                insert(mesh_deliveries), [{"message_id": row_id, "recipient": r} for r in recipients]
            )
        return message, recipients

    async def _recipients(
        self, conn: AsyncConnection, source: str, target: str | None, actor: Principal | None
    ) -> list[str]:
        """Who a message from `source` goes to, in one query that also reads owners and (bounded) inbox sizes;
        raises for an unknown source or target (404), another account's source (403) or a full inbox (409)."""
        pending: ColumnElement[Any] = (
            select(func.count())
            .where(mesh_deliveries.c.recipient == mesh_members.c.instance_id)
            .correlate(mesh_members)
            .scalar_subquery()
        )
        if target is not None:  # count only the target's inbox (CASE evaluates it for that row alone)
            pending = case((mesh_members.c.instance_id == target, pending), else_=0)
        rows = (
            await conn.execute(select(mesh_members.c.instance_id, mesh_members.c.owner_id, pending))
        ).all()
        owners = {row[0]: row[1] for row in rows}
        if source not in owners:
            raise UnknownInstanceError(
                f"source instance '{source}' is not registered here; only members may send",
                details={"hint": "register with POST /registry/register first"},
            )
        if actor is not None:
            authorize(actor, source, owners[source])
        if target is not None and target not in owners:
            raise UnknownInstanceError(
                f"target instance '{target}' not found; nothing was queued",
                details={"target_instance": target},
            )
        recipients = [target] if target is not None else sorted(set(owners) - {source})
        full = sorted(row[0] for row in rows if row[0] in recipients and row[2] >= self.max_queued_messages)
        if full:
            raise QuotaExceededError(
                f"the inbox of {', '.join(full)} already holds {self.max_queued_messages} messages "
                "([mesh] max_queued_messages); nothing was queued",
                details={"full": full, "limit": self.max_queued_messages},
            )
        return recipients

    async def inbox(
        self,
        recipient: str,
        limit: int = INBOX_PAGE,
        after: int | None = None,
        actor: Principal | None = None,
    ) -> InboxPage:
        """Messages not yet acknowledged by `recipient` (which `actor`, when given, must own), oldest first, after
        the cursor `after`: at most `limit` and at most `max_inbox_bytes` of payload (always at least one)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= INBOX_MAX_PAGE:
            raise InvalidRequestError(f"limit must be from 1 to {INBOX_MAX_PAGE}")
        waiting = (mesh_deliveries.c.recipient == recipient) & _owned(recipient, actor)
        if after is not None:
            waiting = waiting & (mesh_deliveries.c.message_id > after)
        query = (
            select(mesh_messages)
            .join(mesh_deliveries, mesh_deliveries.c.message_id == mesh_messages.c.id)
            .where(waiting)
            .order_by(mesh_messages.c.id)
            .limit(limit + 1)
        )
        rows: list[Any] = []
        total, more = 0, False
        async with self.store.connect() as conn:
            result = await conn.stream(query.execution_options(yield_per=_STREAM_ROWS))
            async for row in result:  # rows are read as they come: a page never holds more than it returns
                total += _payload_bytes(row.payload)
                if len(rows) == limit or (rows and total > self.max_inbox_bytes):
                    more = True
                    break
                rows.append(row)
            await result.close()
            # nothing readable: say why (403, 404) unless it is just empty
            if (
                not rows
                and actor is not None
                and not await check_actor(conn, recipient, actor, allow_absent=True)
            ):
                raise UnknownInstanceError(f"instance '{recipient}' is not registered here, nothing waits")
        messages = [
            AgentMessage(
                r.message_id,
                r.source_instance,
                r.target_instance,
                r.message_type,
                r.payload,
                r.correlation_id,
                r.created_at,
            )
            for r in rows
        ]
        return InboxPage(messages, more, str(rows[-1].id) if more else None)

    async def ack(self, recipient: str, message_ids: Sequence[str], actor: Principal | None = None) -> int:
        """Mark messages delivered to `recipient` (which `actor`, when given, must own) only; a message goes once
        every recipient has it. Returns how many were waiting."""
        if len(message_ids) > MAX_ACK:
            raise InvalidRequestError(f"acknowledge at most {MAX_ACK} message ids at once")
        for message_id in message_ids:
            if (
                not isinstance(message_id, str)
                or len(message_id) > MAX_MESSAGE_ID
                or _CONTROL.search(message_id)
            ):
                raise InvalidRequestError(f"message ids are strings of at most {MAX_MESSAGE_ID} characters")
        async with self.store.transaction() as conn:
            ids = select(mesh_messages.c.id).where(mesh_messages.c.message_id.in_(list(message_ids)))
            result = await conn.execute(
                delete(mesh_deliveries).where(
                    mesh_deliveries.c.recipient == recipient,
                    mesh_deliveries.c.message_id.in_(ids),
                    _owned(recipient, actor),
                )
            )
            count = int(result.rowcount or 0)
            if not count:  # nothing removed: say why (403, 404) unless nothing was waiting
                if actor is not None:
                    await check_actor(conn, recipient, actor, allow_absent=True)
                return 0
            await conn.execute(
                delete(mesh_messages).where(
                    mesh_messages.c.message_id.in_(list(message_ids)),
                    ~exists().where(mesh_deliveries.c.message_id == mesh_messages.c.id),
                )
            )
        return count

    async def pending(self) -> int:
        """Deliveries not yet acknowledged, across all recipients."""
        async with self.store.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(mesh_deliveries)) or 0)

    async def prune(self, older_than: dt.timedelta, fence: Fence | None = None) -> int:
        """Drop messages older than `older_than`, delivered or not; returns how many (`fence` runs first in the
        same transaction: a singleton job's lease)."""
        async with self.store.transaction() as conn:
            if fence is not None:
                await fence(conn)
            result = await conn.execute(
                delete(mesh_messages).where(mesh_messages.c.created_at < utcnow() - older_than)
            )
        return int(result.rowcount or 0)
