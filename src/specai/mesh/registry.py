"""The mesh registry: persisted members bound to the account that registered them, ranked by the registry."""

from __future__ import annotations

import datetime as dt
import re
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Row, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.errors import (
    ConflictError,
    CorruptFileError,
    ForbiddenError,
    InvalidRequestError,
    QuotaExceededError,
    UnknownInstanceError,
)
from specai.files import write_private
from specai.ids import check_instance_id, is_instance_id
from specai.mesh.peer_token import PEER_PREFIX, bound_instance
from specai.store import Store
from specai.store.engine import insert_ignore
from specai.store.lease import Fence
from specai.store.schema import mesh_members
from specai.store.types import utcnow
from specai.users.access import Principal

INSTANCE_ID_FILE = "instance_id"
MAX_FIELD = 2048  # hostname, base_url, fingerprint, capability and profile names
MAX_LIST = 256  # capabilities, agent profiles


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
    if not is_instance_id(found):
        raise CorruptFileError(f"{path} does not hold an instance id; delete it to get a new one")
    return found


def _text(value: Any, name: str, *, empty: bool = False) -> str:
    """A printable string of at most MAX_FIELD characters (PostgreSQL cannot store NUL: refused up front)."""
    if not isinstance(value, str) or len(value) > MAX_FIELD or (not value and not empty):
        raise InvalidRequestError(f"{name} must be a string of 1 to {MAX_FIELD} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidRequestError(f"{name} must not contain control characters (NUL, newlines, ...)")
    return value


def _names(values: Sequence[Any], name: str) -> list[str]:
    if len(values) > MAX_LIST:
        raise InvalidRequestError(f"{name} may list at most {MAX_LIST} names")
    return sorted({_text(v, name) for v in values})


# --- registry ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberInfo:
    """What an instance says about itself when it registers (never its rank: the registry assigns that)."""

    instance_id: str
    hostname: str
    port: int
    capabilities: Sequence[str] = ()
    agent_profiles: Sequence[str] = ()
    base_url: str | None = None
    fingerprint: str | None = None

    def values(self) -> dict[str, Any]:
        """The validated columns it sets; only https:// base URLs (the server contacts nothing else)."""
        check_instance_id(self.instance_id)
        hostname = _text(self.hostname, "hostname")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise InvalidRequestError("port must be from 1 to 65535")
        base_url = _text(self.base_url or f"https://{hostname}:{self.port}", "base_url").rstrip("/")
        if not base_url.startswith("https://") or len(base_url) <= len("https://"):
            raise InvalidRequestError("base_url must be an https:// URL (TLS is mandatory)")
        return {
            "hostname": hostname,
            "port": self.port,
            "base_url": base_url,
            "fingerprint": None if self.fingerprint is None else _text(self.fingerprint, "fingerprint"),
            "capabilities": _names(self.capabilities, "capabilities"),
            "agent_profiles": _names(self.agent_profiles, "agent_profiles"),
        }


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


def authorize(actor: Principal, instance_id: str, owner: str | None, *, claimable: bool = False) -> None:
    """An account acts only for the instance ids it registered, a peer token only for its own; admins for any."""
    if actor.is_admin:
        return
    bound = bound_instance(actor)
    if bound is not None and bound != instance_id:
        raise ForbiddenError(f"this peer token acts only for instance '{bound}', not '{instance_id}'")
    if owner == actor.user_id or (owner is None and claimable):
        return
    raise ForbiddenError(
        f"instance '{instance_id}' belongs to another account; only that account (or an admin) may act for it"
    )


async def check_actor(
    conn: AsyncConnection, instance_id: str, actor: Principal, *, allow_absent: bool = False
) -> bool:
    """`MeshRegistry.authorize` on an open connection (so a queue operation checks its caller in one round)."""
    row = (
        await conn.execute(select(mesh_members.c.owner_id).where(mesh_members.c.instance_id == instance_id))
    ).first()
    if row is None:
        if allow_absent and actor.is_admin:
            return False
        raise UnknownInstanceError(f"instance '{instance_id}' is not registered here")
    authorize(actor, instance_id, row.owner_id)
    return True


class MeshRegistry:
    """Members persisted in the store, each bound to the account that first registered it; liveness is judged
    from the heartbeats this server received, ranks from the registration time this registry (or the one this
    server joined) assigned."""

    def __init__(
        self, store: Store, self_id: str, leader_timeout: float, max_members_per_account: int = 16
    ) -> None:
        self.store = store
        self.self_id = self_id
        self.leader_timeout = dt.timedelta(seconds=leader_timeout)
        self.max_members_per_account = max_members_per_account

    async def register(self, info: MemberInfo, actor: Principal | None = None) -> Member:
        """Add or refresh a member for `actor` (None: this server itself); a known member keeps its rank, and only
        its own account may change it. A member with no owner (registered before owners existed) is claimed."""
        values = {**info.values(), "last_heartbeat": utcnow()}
        owner = PEER_PREFIX + self.self_id if actor is None else actor.user_id
        async with self.store.transaction() as conn:
            row = (
                await conn.execute(
                    select(mesh_members.c.owner_id).where(mesh_members.c.instance_id == info.instance_id)
                )
            ).first()
            if actor is not None:
                authorize(actor, info.instance_id, None if row is None else row.owner_id, claimable=True)
            if row is None or row.owner_id is None:
                if actor is not None:
                    await self._check_quota(conn, actor)
                values["owner_id"] = owner
            if row is None:
                result = await conn.execute(
                    insert_ignore(conn, mesh_members, "instance_id").values(
                        instance_id=info.instance_id, registered_at=values["last_heartbeat"], **values
                    )
                )
            else:  # unchanged owner: a concurrent claim of the same id loses the race instead of sharing it
                was = mesh_members.c.owner_id
                result = await conn.execute(
                    update(mesh_members)
                    .where(
                        mesh_members.c.instance_id == info.instance_id,
                        was.is_(None) if row.owner_id is None else was == row.owner_id,
                    )
                    .values(**values)
                )
            if not result.rowcount:
                raise ConflictError(f"instance '{info.instance_id}' was registered concurrently; try again")
        return await self.member(info.instance_id)

    async def _check_quota(self, conn: AsyncConnection, actor: Principal) -> None:
        if actor.is_admin:
            return
        count = await conn.scalar(
            select(func.count()).select_from(mesh_members).where(mesh_members.c.owner_id == actor.user_id)
        )
        if int(count or 0) >= self.max_members_per_account:
            raise QuotaExceededError(
                f"this account already registered {count} members, the most allowed "
                "([mesh] max_members_per_account); deregister one first",
                details={"limit": self.max_members_per_account},
            )

    async def authorize(self, instance_id: str, actor: Principal, *, allow_absent: bool = False) -> bool:
        """Raise unless `actor` may act for `instance_id` (403), or it is unknown (404; admins may name a departed
        member when `allow_absent`). Returns whether it is a member."""
        async with self.store.connect() as conn:
            return await check_actor(conn, instance_id, actor, allow_absent=allow_absent)

    async def heartbeat(self, instance_id: str, actor: Principal) -> None:
        """Record that `instance_id` is alive; UnknownInstanceError when it is not registered (it should re-register),
        ForbiddenError when another account owns it."""
        async with self.store.transaction() as conn:
            row = (
                await conn.execute(
                    select(mesh_members.c.owner_id).where(mesh_members.c.instance_id == instance_id)
                )
            ).first()
            if row is None or (row.owner_id is None and not actor.is_admin):
                raise UnknownInstanceError(
                    f"instance '{instance_id}' is not registered here"
                    + ("" if row is None else " by any account"),
                    details={"hint": "register again with POST /registry/register"},
                )
            authorize(actor, instance_id, row.owner_id)
            await conn.execute(
                update(mesh_members)
                .where(mesh_members.c.instance_id == instance_id)
                .values(last_heartbeat=utcnow())
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
        """Adopt the member list of the registry this server joined (call it with nothing else): new members are
        added, every rank follows the registry's, and each member is bound to its own peer identity (it acts here
        with a peer token); liveness stays what this server itself observed."""
        now = utcnow()
        async with self.store.transaction() as conn:
            for peer in peers:
                try:
                    info = MemberInfo(
                        peer["instance_id"],
                        peer["hostname"],
                        peer["port"],
                        list(peer.get("capabilities") or []),
                        list(peer.get("agent_profiles") or []),
                        peer["base_url"],
                        peer.get("fingerprint"),
                    )
                    values = {
                        **info.values(),
                        "registered_at": min(dt.datetime.fromisoformat(peer["created_at"]), now),
                        "owner_id": PEER_PREFIX + info.instance_id,
                    }
                    heard = min(dt.datetime.fromisoformat(peer["last_heartbeat"]), now)
                except (KeyError, TypeError, ValueError, InvalidRequestError):
                    continue  # a malformed entry is skipped, not fatal
                await conn.execute(
                    insert_ignore(conn, mesh_members, "instance_id").values(
                        instance_id=info.instance_id, last_heartbeat=heard, **values
                    )
                )
                await conn.execute(
                    update(mesh_members)
                    .where(mesh_members.c.instance_id == info.instance_id)
                    .values(**values)
                )

    async def deregister(self, instance_id: str, actor: Principal) -> None:
        """Remove a member (its undelivered messages stay until acknowledged or expired); 404 if unknown, 403 when
        another account owns it."""
        await self.authorize(instance_id, actor)
        async with self.store.transaction() as conn:
            result = await conn.execute(delete(mesh_members).where(mesh_members.c.instance_id == instance_id))
        if not result.rowcount:
            raise UnknownInstanceError(f"instance '{instance_id}' is not registered here")

    async def evict(self, older_than: dt.timedelta, fence: Fence | None = None) -> list[str]:
        """Remove members silent for longer than `older_than` (never this server itself); returns their ids.

        `fence` runs first in the same transaction (a singleton job's lease: nothing is removed once it is lost).
        """
        cutoff = utcnow() - older_than
        async with self.store.transaction() as conn:
            if fence is not None:
                await fence(conn)
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
