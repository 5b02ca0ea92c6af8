"""The mesh message queue: durable messages with delivery state per recipient, bounded per recipient and per read."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Integer, delete, exists, func, insert, or_, select

from specai.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    QuotaExceededError,
    UnknownInstanceError,
    UnprocessableError,
)
from specai.store import Store, mesh_deliveries, mesh_members, mesh_messages, utcnow

INBOX_PAGE = 100  # messages per inbox page unless asked otherwise
INBOX_MAX_PAGE = 1000
MAX_ACK = 1000  # message ids per acknowledgement
MAX_MESSAGE_ID = 64
_CURSOR = re.compile(r"[0-9]{1,18}")  # ASCII digits only (int() would also take '²' or Arabic-Indic digits)
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
    ) -> tuple[AgentMessage, list[str]]:
        """Queue a message for `target`, or for every member but the source; nothing is stored on any error,
        including a recipient whose inbox already holds `max_queued_messages`."""
        kind = parse_message_type(message_type)
        self._check(payload, correlation_id)
        message = AgentMessage(str(uuid.uuid4()), source, target, kind, payload, correlation_id, utcnow())
        async with self.store.transaction() as conn:
            known = set((await conn.scalars(select(mesh_members.c.instance_id))).all())
            if source not in known:
                raise UnknownInstanceError(
                    f"source instance '{source}' is not registered here; only members may send",
                    details={"hint": "register with POST /registry/register first"},
                )
            if target is not None and target not in known:
                raise UnknownInstanceError(
                    f"target instance '{target}' not found; nothing was queued",
                    details={"target_instance": target},
                )
            recipients = [target] if target is not None else sorted(known - {source})
            if not recipients:  # a broadcast from the only member: nobody could ever acknowledge it
                return message, recipients
            full = (
                (
                    await conn.execute(
                        select(mesh_deliveries.c.recipient)
                        .where(mesh_deliveries.c.recipient.in_(recipients))
                        .group_by(mesh_deliveries.c.recipient)
                        .having(func.count() >= self.max_queued_messages)
                    )
                )
                .scalars()
                .all()
            )
            if full:
                raise QuotaExceededError(
                    f"the inbox of {', '.join(sorted(full))} already holds {self.max_queued_messages} messages "
                    "([mesh] max_queued_messages); nothing was queued",
                    details={"full": sorted(full), "limit": self.max_queued_messages},
                )
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

    async def inbox(self, recipient: str, limit: int = INBOX_PAGE, after: int | None = None) -> InboxPage:
        """Messages not yet acknowledged by `recipient`, oldest first, after the cursor `after`: at most `limit`
        and at most `max_inbox_bytes` of payload (always at least one message)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= INBOX_MAX_PAGE:
            raise InvalidRequestError(f"limit must be from 1 to {INBOX_MAX_PAGE}")
        waiting = mesh_deliveries.c.recipient == recipient
        if after is not None:
            waiting = waiting & (mesh_deliveries.c.message_id > after)
        candidates = (  # from the (recipient, message_id) index alone
            select(mesh_deliveries.c.message_id)
            .where(waiting)
            .order_by(mesh_deliveries.c.message_id)
            .limit(limit + 1)
            .subquery()
        )
        size = func.coalesce(func.length(mesh_messages.c.payload, type_=Integer), 4)
        sized = (  # a running total of payload characters over at most limit + 1 candidates
            select(
                mesh_messages.c.id.label("row_id"),
                size.label("size"),
                func.sum(size).over(order_by=mesh_messages.c.id).label("running"),
                func.count().over().label("candidates"),
            )
            .where(mesh_messages.c.id.in_(select(candidates.c.message_id)))
            .subquery()
        )
        query = (  # only the rows that fit are read in full (the first always does)
            select(mesh_messages, sized.c.candidates)
            .join(sized, sized.c.row_id == mesh_messages.c.id)
            .where(or_(sized.c.running <= self.max_inbox_bytes, sized.c.running == sized.c.size))
            .order_by(mesh_messages.c.id)
            .limit(limit)
        )
        async with self.store.connect() as conn:
            rows = (await conn.execute(query)).all()
        kept = self._fit([(r.id, _payload_bytes(r.payload)) for r in rows])  # exact bytes, not characters
        rows = rows[: len(kept)]
        more = bool(rows) and len(rows) < rows[0].candidates
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

    def _fit(self, sizes: Sequence[tuple[int, int]]) -> list[int]:
        """The leading ids whose payloads fit in `max_inbox_bytes` (at least one)."""
        kept: list[int] = []
        total = 0
        for row_id, size in sizes:
            total += size
            if kept and total > self.max_inbox_bytes:
                break
            kept.append(row_id)
        return kept

    async def ack(self, recipient: str, message_ids: Sequence[str]) -> int:
        """Mark messages delivered to `recipient` only; a message goes once every recipient has it. Returns count."""
        if len(message_ids) > MAX_ACK:
            raise InvalidRequestError(f"acknowledge at most {MAX_ACK} message ids at once")
        for message_id in message_ids:
            if (
                not isinstance(message_id, str)
                or len(message_id) > MAX_MESSAGE_ID
                or _CONTROL.search(message_id)
            ):
                raise InvalidRequestError(f"message ids are strings of at most {MAX_MESSAGE_ID} characters")
        if not message_ids:
            return 0
        async with self.store.transaction() as conn:
            ids = select(mesh_messages.c.id).where(mesh_messages.c.message_id.in_(list(message_ids)))
            result = await conn.execute(
                delete(mesh_deliveries).where(
                    mesh_deliveries.c.recipient == recipient, mesh_deliveries.c.message_id.in_(ids)
                )
            )
            await conn.execute(
                delete(mesh_messages).where(
                    mesh_messages.c.message_id.in_(list(message_ids)),
                    ~exists().where(mesh_deliveries.c.message_id == mesh_messages.c.id),
                )
            )
        return int(result.rowcount or 0)

    async def pending(self) -> int:
        """Deliveries not yet acknowledged, across all recipients."""
        async with self.store.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(mesh_deliveries)) or 0)

    async def prune(self, older_than: dt.timedelta) -> int:
        """Drop messages older than `older_than`, delivered or not; returns how many."""
        async with self.store.transaction() as conn:
            result = await conn.execute(
                delete(mesh_messages).where(mesh_messages.c.created_at < utcnow() - older_than)
            )
        return int(result.rowcount or 0)
