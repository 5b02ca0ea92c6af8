"""The mesh: a persistent registry of specai servers with a deterministic leader, and a per-recipient message queue."""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Row, delete, exists, func, insert, select, update

from specai.errors import (
    CorruptFileError,
    InvalidRequestError,
    PayloadTooLargeError,
    UnknownInstanceError,
    UnprocessableError,
)
from specai.files import write_private
from specai.store import Store, mesh_deliveries, mesh_members, mesh_messages, utcnow

INSTANCE_ID_FILE = "instance_id"
MAX_INSTANCE_ID = 128
INBOX_LIMIT = 1000
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
_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


# --- identity ----------------------------------------------------------------------------------------------------


def load_instance_id(home: Path) -> str:
    """This server's mesh identity: read from `$SPECAI_HOME/instance_id`, created once (`<host>-<uuid>`, 0600)."""
    path = home / INSTANCE_ID_FILE
    try:
        found = path.read_text().strip()
    except FileNotFoundError:
        host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname().split(".")[0]) or "specai"
        found = f"{host}-{uuid.uuid4()}"
        write_private(path, (found + "\n").encode())
        return found
    except OSError as exc:
        raise CorruptFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not _INSTANCE_ID.fullmatch(found) or len(found) > MAX_INSTANCE_ID:
        raise CorruptFileError(f"{path} does not hold an instance id; delete it to get a new one")
    return found


def check_instance_id(value: Any, name: str = "instance_id") -> str:
    """1-128 letters, digits and `._:-`, starting with a letter or digit."""
    if not isinstance(value, str) or len(value) > MAX_INSTANCE_ID or not _INSTANCE_ID.fullmatch(value):
        raise InvalidRequestError(
            f"{name} must be 1 to {MAX_INSTANCE_ID} letters, digits or . _ : - (starting with a letter or digit)"
        )
    return value


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


# --- registry ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberInfo:
    """What an instance says about itself when it registers."""

    instance_id: str
    hostname: str
    port: int
    capabilities: Sequence[str] = ()
    agent_profiles: Sequence[str] = ()
    base_url: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True)
class Member:
    """A registered instance as this server sees it; `live` when heard from within the leader timeout."""

    instance_id: str
    hostname: str
    port: int
    base_url: str
    fingerprint: str | None
    capabilities: list[str]
    agent_profiles: list[str]
    registered_at: dt.datetime
    last_heartbeat: dt.datetime
    live: bool

    def as_dict(self, leader_id: str | None) -> dict[str, Any]:
        """The original's MeshInstance plus `base_url`, `fingerprint` and `status`."""
        return {
            "instance_id": self.instance_id,
            "hostname": self.hostname,
            "port": self.port,
            "capabilities": self.capabilities,
            "is_leader": self.instance_id == leader_id,
            "last_heartbeat": self.last_heartbeat.isoformat(),
            "created_at": self.registered_at.isoformat(),
            "agent_profiles": self.agent_profiles,
            "base_url": self.base_url,
            "fingerprint": self.fingerprint,
            "status": "live" if self.live else "stale",
        }


@dataclass(frozen=True)
class MeshView:
    """Every member this server knows and the leader they imply."""

    members: list[Member]
    leader_id: str | None


def elect(members: Sequence[Member]) -> str | None:
    """The leader: the earliest-registered live member, ties broken by instance id; None when none is live."""
    live = [m for m in members if m.live]
    return min(live, key=lambda m: (m.registered_at, m.instance_id)).instance_id if live else None


class MeshRegistry:
    """Members persisted in the store; liveness is judged from the heartbeats this server received."""

    def __init__(self, store: Store, self_id: str, leader_timeout: float) -> None:
        self.store = store
        self.self_id = self_id
        self.leader_timeout = dt.timedelta(seconds=leader_timeout)

    async def register(self, info: MemberInfo, registered_at: dt.datetime | None = None) -> Member:
        """Add or refresh a member; a known member keeps its original registration time (and so its rank)."""
        check_instance_id(info.instance_id)
        if not isinstance(info.port, int) or not 1 <= info.port <= 65535:
            raise InvalidRequestError("port must be from 1 to 65535")
        now = utcnow()
        base_url = (info.base_url or f"https://{info.hostname}:{info.port}").rstrip("/")
        if not base_url.startswith("https://"):
            raise InvalidRequestError("base_url must be an https:// URL (TLS is mandatory)")
        values = {
            "hostname": info.hostname,
            "port": info.port,
            "base_url": base_url,
            "fingerprint": info.fingerprint,
            "capabilities": sorted(set(info.capabilities)),
            "agent_profiles": sorted(set(info.agent_profiles)),
            "last_heartbeat": now,
        }
        async with self.store.transaction() as conn:
            found = await conn.scalar(
                select(mesh_members.c.registered_at).where(mesh_members.c.instance_id == info.instance_id)
            )
            if found is None:
                stamp = min(registered_at, now) if registered_at is not None else now
                await conn.execute(
                    insert(mesh_members).values(instance_id=info.instance_id, registered_at=stamp, **values)
                )
            else:
                await conn.execute(
                    update(mesh_members)
                    .where(mesh_members.c.instance_id == info.instance_id)
                    .values(**values)
                )
        return await self.member(info.instance_id)

    async def heartbeat(self, instance_id: str) -> None:
        """Record that `instance_id` is alive; UnknownInstanceError when it is not registered (it should re-register)."""
        async with self.store.transaction() as conn:
            result = await conn.execute(
                update(mesh_members)
                .where(mesh_members.c.instance_id == instance_id)
                .values(last_heartbeat=utcnow())
            )
        if not result.rowcount:
            raise UnknownInstanceError(
                f"instance '{instance_id}' is not registered here",
                details={"hint": "register again with POST /registry/register"},
            )

    async def touch(self, instance_id: str) -> None:
        """Record that a known member answered us (heard from it); unknown ids are ignored."""
        async with self.store.transaction() as conn:
            await conn.execute(
                update(mesh_members)
                .where(mesh_members.c.instance_id == instance_id)
                .values(last_heartbeat=utcnow())
            )

    async def learn(self, peers: Sequence[dict[str, Any]]) -> None:
        """Adopt the registry's member list: new members are added, and every registration time follows the
        registry's (it decides the ranks); liveness stays what this server itself observed."""
        now = utcnow()
        async with self.store.transaction() as conn:
            for peer in peers:
                try:
                    instance_id = check_instance_id(peer["instance_id"])
                    registered_at = min(dt.datetime.fromisoformat(peer["created_at"]), now)
                    heard = min(dt.datetime.fromisoformat(peer["last_heartbeat"]), now)
                    values = {
                        "hostname": str(peer["hostname"]),
                        "port": int(peer["port"]),
                        "base_url": str(peer["base_url"]),
                        "fingerprint": peer.get("fingerprint"),
                        "capabilities": list(peer.get("capabilities") or []),
                        "agent_profiles": list(peer.get("agent_profiles") or []),
                        "registered_at": registered_at,
                    }
                except (KeyError, TypeError, ValueError, InvalidRequestError):
                    continue  # a malformed entry is skipped, not fatal
                found = await conn.scalar(
                    select(mesh_members.c.instance_id).where(mesh_members.c.instance_id == instance_id)
                )
                if found is None:
                    await conn.execute(
                        insert(mesh_members).values(instance_id=instance_id, last_heartbeat=heard, **values)
                    )
                else:
                    await conn.execute(
                        update(mesh_members).where(mesh_members.c.instance_id == instance_id).values(**values)
                    )

    async def deregister(self, instance_id: str) -> None:
        """Remove a member (its undelivered messages stay until acknowledged or expired); 404 if unknown."""
        async with self.store.transaction() as conn:
            result = await conn.execute(delete(mesh_members).where(mesh_members.c.instance_id == instance_id))
        if not result.rowcount:
            raise UnknownInstanceError(f"instance '{instance_id}' is not registered here")

    async def evict(self, older_than: dt.timedelta) -> list[str]:
        """Remove members silent for longer than `older_than` (never this server itself); returns their ids."""
        cutoff = utcnow() - older_than
        async with self.store.transaction() as conn:
            stale = (
                await conn.scalars(
                    select(mesh_members.c.instance_id).where(
                        mesh_members.c.last_heartbeat < cutoff, mesh_members.c.instance_id != self.self_id
                    )
                )
            ).all()
            if stale:
                await conn.execute(delete(mesh_members).where(mesh_members.c.instance_id.in_(stale)))
        return list(stale)

    async def member(self, instance_id: str) -> Member:
        """One member, or UnknownInstanceError."""
        async with self.store.connect() as conn:
            row = (
                await conn.execute(select(mesh_members).where(mesh_members.c.instance_id == instance_id))
            ).first()
        if row is None:
            raise UnknownInstanceError(f"instance '{instance_id}' is not registered here")
        return self._member(row, utcnow())

    async def view(self) -> MeshView:
        """Every member, oldest registration first, and the leader."""
        async with self.store.connect() as conn:
            rows = (
                await conn.execute(
                    select(mesh_members).order_by(mesh_members.c.registered_at, mesh_members.c.instance_id)
                )
            ).all()
        now = utcnow()
        members = [self._member(row, now) for row in rows]
        return MeshView(members, elect(members))

    def _member(self, row: Row[Any], now: dt.datetime) -> Member:
        live = row.instance_id == self.self_id or now - row.last_heartbeat <= self.leader_timeout
        return Member(
            instance_id=row.instance_id,
            hostname=row.hostname,
            port=row.port,
            base_url=row.base_url,
            fingerprint=row.fingerprint,
            capabilities=list(row.capabilities),
            agent_profiles=list(row.agent_profiles),
            registered_at=row.registered_at,
            last_heartbeat=row.last_heartbeat,
            live=live,
        )


# --- messages ----------------------------------------------------------------------------------------------------


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


class MessageQueue:
    """Durable messages with delivery state per recipient: one member's ack removes a message only for it."""

    def __init__(self, store: Store, max_payload_bytes: int) -> None:
        self.store = store
        self.max_payload_bytes = max_payload_bytes

    async def send(
        self,
        source: str,
        target: str | None,
        message_type: Any,
        payload: Any,
        correlation_id: str | None = None,
    ) -> tuple[AgentMessage, list[str]]:
        """Queue a message for `target`, or for every member but the source; nothing is stored on any error."""
        kind = parse_message_type(message_type)
        size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())
        if size > self.max_payload_bytes:
            raise PayloadTooLargeError(
                f"payload is {size} bytes; the limit is {self.max_payload_bytes} ([mesh] max_payload_bytes)"
            )
        if correlation_id is not None and (not isinstance(correlation_id, str) or len(correlation_id) > 256):
            raise InvalidRequestError("correlation_id must be a string of at most 256 characters")
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

    async def inbox(self, recipient: str, limit: int = INBOX_LIMIT) -> list[AgentMessage]:
        """Messages not yet acknowledged by `recipient`, oldest first."""
        query = (
            select(mesh_messages)
            .join(mesh_deliveries, mesh_deliveries.c.message_id == mesh_messages.c.id)
            .where(mesh_deliveries.c.recipient == recipient)
            .order_by(mesh_messages.c.id)
            .limit(limit)
        )
        async with self.store.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
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

    async def ack(self, recipient: str, message_ids: Sequence[str]) -> int:
        """Mark messages delivered to `recipient` only; a message goes once every recipient has it. Returns count."""
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
