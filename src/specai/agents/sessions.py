"""Conversation history per user, stored so agents can remember earlier turns and users can review or delete them."""

from __future__ import annotations

import builtins
import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.errors import InvalidRequestError, NotFoundError
from specai.ids import check_new_session_id, check_session_id
from specai.store import Store
from specai.store.engine import insert_ignore
from specai.store.schema import MESSAGE_ROLES, a2a_tasks
from specai.store.schema import messages as messages_table
from specai.store.schema import sessions as sessions_table
from specai.store.types import utcnow


@dataclass(frozen=True)
class Session:
    """One conversation and how many messages it holds."""

    id: str
    owner: str
    agent: str
    created_at: dt.datetime
    updated_at: dt.datetime
    message_count: int


@dataclass(frozen=True)
class StoredMessage:
    """A message as stored, with its database id and UTC timestamp."""

    id: int
    session_id: str
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    name: str | None
    created_at: dt.datetime


@dataclass(frozen=True)
class NewMessage:
    """A message to store: `role` is system, user, assistant or tool."""

    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.role not in MESSAGE_ROLES:
            raise InvalidRequestError(f"message role {self.role!r} must be one of {', '.join(MESSAGE_ROLES)}")
        if not isinstance(self.content, str):
            raise InvalidRequestError(f"message content must be a string, got {type(self.content).__name__}")
        if self.tool_calls is not None and not (
            isinstance(self.tool_calls, list) and all(isinstance(call, dict) for call in self.tool_calls)
        ):
            raise InvalidRequestError("message tool_calls must be a list of objects")


def new_session_id() -> str:
    """A fresh, unguessable session id."""
    return str(uuid.uuid4())


def _not_found(session_id: str) -> NotFoundError:
    return NotFoundError(f"no session '{session_id}'")


_message_count = (
    select(func.count(messages_table.c.id))
    .where(messages_table.c.session_id == sessions_table.c.id)
    .scalar_subquery()
)
_session_query = select(sessions_table, _message_count.label("message_count"))


def _session(row: Row[Any]) -> Session:
    return Session(row.id, row.owner, row.agent, row.created_at, row.updated_at, row.message_count)


def _message(row: Row[Any]) -> StoredMessage:
    return StoredMessage(
        row.id,
        row.session_id,
        row.role,
        row.content,
        row.tool_calls,
        row.tool_call_id,
        row.name,
        row.created_at,
    )


def _row(session_id: str, message: NewMessage, now: dt.datetime) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "role": message.role,
        "content": message.content,
        "tool_calls": message.tool_calls,
        "tool_call_id": message.tool_call_id,
        "name": message.name,
        "created_at": now,
    }


class SessionStore:
    """Sessions and their messages; every read and write is scoped to the owning user."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def owner_of(self, session_id: str) -> str | None:
        """Who owns the session, or None when it does not exist (for callers that must refuse before a model call)."""
        async with self._store.connect() as conn:
            return await conn.scalar(select(sessions_table.c.owner).where(sessions_table.c.id == session_id))

    async def get(self, session_id: str, owner: str) -> Session:
        """The owner's session; NotFoundError when it is missing or belongs to someone else."""
        async with self._store.connect() as conn:
            return await self._get(conn, session_id, owner)

    async def list(self, owner: str, limit: int = 100) -> builtins.list[Session]:
        """The owner's sessions, most recently updated first."""
        if limit < 1:
            raise InvalidRequestError(f"limit must be at least 1, got {limit}")
        query = (
            _session_query.where(sessions_table.c.owner == owner)
            .order_by(
                sessions_table.c.updated_at.desc(), sessions_table.c.created_at.desc(), sessions_table.c.id
            )
            .limit(limit)
        )
        async with self._store.connect() as conn:
            return [_session(row) for row in await conn.execute(query)]

    async def count(self) -> int:
        """How many sessions exist, across all users."""
        async with self._store.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(sessions_table)) or 0)

    async def delete(self, session_id: str, owner: str) -> None:
        """Delete the owner's session, its messages and the A2A tasks of it (they hold copies of the conversation);
        NotFoundError when it is missing or someone else's."""
        async with self._store.transaction() as conn:
            result = await conn.execute(
                delete(sessions_table).where(
                    sessions_table.c.id == session_id, sessions_table.c.owner == owner
                )
            )
            if result.rowcount == 0:
                raise _not_found(session_id)
            await conn.execute(
                delete(a2a_tasks).where(a2a_tasks.c.owner_id == owner, a2a_tasks.c.context_id == session_id)
            )

    async def messages(self, session_id: str, owner: str) -> builtins.list[StoredMessage]:
        """Every message of the owner's session, oldest first; NotFoundError when it is missing or someone else's."""
        async with self._store.connect() as conn:
            await self._get(conn, session_id, owner)
            query = (
                select(messages_table)
                .where(messages_table.c.session_id == session_id)
                .order_by(messages_table.c.id)
            )
            return [_message(row) for row in await conn.execute(query)]

    async def history(self, session_id: str, owner: str, exchanges: int) -> builtins.list[StoredMessage]:
        """The messages of the last `exchanges` user turns (each with its assistant and tool messages), oldest first.

        An unknown session has no history ([]); someone else's session raises NotFoundError.
        """
        if exchanges < 0:
            raise InvalidRequestError(f"exchanges must be 0 or more, got {exchanges}")
        async with self._store.connect() as conn:
            found = await conn.scalar(select(sessions_table.c.owner).where(sessions_table.c.id == session_id))
            if found is not None and found != owner:
                raise _not_found(session_id)
            if found is None or exchanges == 0:
                return []
            return [_message(row) for row in await conn.execute(_window(session_id, exchanges))]

    async def append(
        self, session_id: str, owner: str, agent: str, messages: Sequence[NewMessage]
    ) -> Session:
        """Store a run's messages in one transaction, creating the session for `owner` when it is new.

        NotFoundError when the session belongs to someone else; on any failure nothing is stored.
        """
        check_session_id(session_id)
        batch = builtins.list(messages)
        if not all(isinstance(message, NewMessage) for message in batch):
            raise InvalidRequestError("append takes NewMessage objects")
        now = utcnow()
        async with self._store.transaction() as conn:
            session = await self._claim(conn, session_id, owner, agent, now, len(batch))
            if batch:
                await conn.execute(insert(messages_table), [_row(session_id, m, now) for m in batch])
        return session

    async def _claim(
        self, conn: AsyncConnection, session_id: str, owner: str, agent: str, now: dt.datetime, adding: int
    ) -> Session:
        """Create the session, or touch the owner's existing one (its row then locked, so concurrent appends to it do
        not interleave); the session as it will be once `adding` messages are in. One statement for a new session,
        two for an existing one."""
        created = await conn.execute(
            insert_ignore(conn, sessions_table, "id").values(
                id=session_id, owner=owner, agent=agent, created_at=now, updated_at=now
            )
        )
        if created.rowcount:  # the new row is this transaction's until it commits
            check_new_session_id(session_id)  # raising rolls the insert back with the transaction
            return Session(session_id, owner, agent, now, now, adding)
        count = (
            select(func.count(messages_table.c.id))
            .where(messages_table.c.session_id == session_id)
            .scalar_subquery()
        )
        touch = (
            update(sessions_table)
            .where(sessions_table.c.id == session_id, sessions_table.c.owner == owner)
            .values(updated_at=now)
            .returning(sessions_table.c.agent, sessions_table.c.created_at, count.label("message_count"))
        )
        row = (await conn.execute(touch)).first()
        if row is None:  # someone else's session
            raise _not_found(session_id)
        return Session(session_id, owner, row.agent, row.created_at, now, row.message_count + adding)

    async def _get(self, conn: AsyncConnection, session_id: str, owner: str) -> Session:
        query = _session_query.where(sessions_table.c.id == session_id, sessions_table.c.owner == owner)
        row = (await conn.execute(query)).first()
        if row is None:
            raise _not_found(session_id)
        return _session(row)


def _window(session_id: str, exchanges: int) -> Any:
    """Messages from the start of the `exchanges`-th most recent user message on (all of them if fewer turns)."""
    turn_start = (
        select(messages_table.c.id)
        .where(messages_table.c.session_id == session_id, messages_table.c.role == "user")
        .order_by(messages_table.c.id.desc())
        .offset(exchanges - 1)
        .limit(1)
        .scalar_subquery()
    )
    return (
        select(messages_table)
        .where(messages_table.c.session_id == session_id, messages_table.c.id >= func.coalesce(turn_start, 0))
        .order_by(messages_table.c.id)
    )
