"""Who may see and change a graph session: its owner (the first to claim it), the users it is shared with, admins.

A principal's access to a session is `write` (owner or admin), `read` or `write` (a share), or `none`. No access
reads exactly like a missing thing (404); a read-only share that tries to write gets 403. A session nobody has
claimed yet reads as empty to everyone but admins; the first access that can create claims it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, bindparam, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from specai.errors import ForbiddenError, InvalidRequestError, NotFoundError, QuotaExceededError
from specai.ids import check_new_session_id
from specai.store.engine import insert_ignore
from specai.store.schema import graph_nodes, graph_sessions, graph_shares
from specai.store.types import utcnow
from specai.users.access import Principal

Level = Literal["none", "read", "write"]
_OWNER_CACHE = 65_536  # an owner never changes, so a known one is kept (bounded, oldest dropped first)
_RECOUNT_SECS = 30.0
_MARGIN = 0.9
_OWNED_NODES = (
    select(func.count())
    .select_from(graph_nodes.join(graph_sessions, graph_nodes.c.session_id == graph_sessions.c.session_id))
    .where(graph_sessions.c.owner_id == bindparam("owner"))
)


class SessionNotFoundError(NotFoundError):
    """A graph session the caller may not see (code `not_found`, like anything missing)."""


def missing(session_id: str) -> NotFoundError:
    """What a session the caller may not see looks like: the same as one that does not exist."""
    return SessionNotFoundError(f"graph session '{session_id}' not found")


@dataclass(frozen=True)
class Grant:
    """What one principal may do to one session; `owner_id` is None while nobody has claimed it."""

    session_id: str
    owner_id: str | None
    level: Level

    @property
    def unclaimed(self) -> bool:
        """Nobody owns the session yet."""
        return self.owner_id is None

    def check(self, who: Principal, need: Level, missing_error: NotFoundError | None = None) -> None:
        """Raise NotFoundError (no access) or ForbiddenError (a read-only share, or a read-scoped token)."""
        if self.level == "none":
            raise missing_error or missing(self.session_id)
        if need == "write":
            if self.level != "write":
                raise ForbiddenError(f"graph session '{self.session_id}' is shared with you read-only")
            who.require("write", "changing the knowledge graph")


@dataclass(frozen=True)
class SessionEntry:
    """One session a user can reach: its owner's id and the user's access to it."""

    session_id: str
    owner_id: str
    access: Literal["owner", "read", "write"]


@dataclass(frozen=True)
class ShareEntry:
    """One user a session is shared with."""

    user_id: str
    user_name: str
    writable: bool


class GraphAccess:
    """Access checks and sharing for graph sessions, each run on the caller's connection (its transaction)."""

    def __init__(self, max_nodes_per_account: int = 0) -> None:
        self.max_nodes_per_account = max_nodes_per_account
        self._owners: dict[str, str] = {}
        self._counts: dict[str, tuple[int, float]] = {}  # owner id -> (nodes, when counted)

    def needs_claim(self, session_id: str) -> bool:
        """False when the session is known to have an owner already (no write needed to claim it)."""
        return session_id not in self._owners

    async def owner(self, conn: AsyncConnection, session_id: str) -> str | None:
        """The session's owner id, or None when nobody has claimed it."""
        known = self._owners.get(session_id)
        if known is None:
            found = await conn.scalar(
                select(graph_sessions.c.owner_id).where(graph_sessions.c.session_id == session_id)
            )
            if found is None:
                return None
            known = self._remember(session_id, str(found))
        return known

    def _remember(self, session_id: str, owner_id: str) -> str:
        if len(self._owners) >= _OWNER_CACHE:
            del self._owners[next(iter(self._owners))]
        self._owners[session_id] = owner_id
        return owner_id

    async def grant(self, conn: AsyncConnection, session_id: str, who: Principal) -> Grant:
        """The principal's access to the session as stored now."""
        owner_id = await self.owner(conn, session_id)
        if who.is_admin or (owner_id is not None and owner_id == who.user_id):
            return Grant(session_id, owner_id, "write")
        if owner_id is None:
            return Grant(session_id, None, "none")
        writable = await conn.scalar(
            select(graph_shares.c.writable).where(
                graph_shares.c.session_id == session_id, graph_shares.c.user_id == who.user_id
            )
        )
        level: Level = "none" if writable is None else ("write" if writable else "read")
        return Grant(session_id, owner_id, level)

    async def claim(self, conn: AsyncConnection, session_id: str, who: Principal) -> Grant:
        """Make the principal the owner if nobody is yet (race-free: insert-ignore, then read the owner).

        Graph data from before owners existed has no owner: only an admin may claim a session that already has
        nodes, so nobody takes over data they could not see (until then it is visible to admins only). Only a
        session that is truly new must have an id `check_new_session_id` accepts (one URL path segment).
        """
        if session_id not in self._owners:
            inserted = await conn.execute(
                insert_ignore(conn, graph_sessions, "session_id").values(
                    session_id=session_id, owner_id=who.user_id, created_at=utcnow()
                )
            )
            if inserted.rowcount:  # not cached: the transaction may still roll back
                if not await _has_nodes(conn, session_id):
                    check_new_session_id(session_id)  # only reachable ids may be created (rolls back)
                elif not who.is_admin:
                    raise missing(session_id)  # rolls the claim back with the transaction
                return Grant(session_id, who.user_id, "write")
        return await self.grant(conn, session_id, who)

    async def require(
        self,
        conn: AsyncConnection,
        session_id: str,
        who: Principal,
        need: Level,
        *,
        claim: bool = False,
        missing_error: NotFoundError | None = None,
    ) -> Grant:
        """The grant, after checking it allows `need` (404 when the session is invisible, 403 when read-only)."""
        grant = await (self.claim if claim else self.grant)(conn, session_id, who)
        grant.check(who, need, missing_error)
        return grant

    async def check_quota(self, conn: AsyncConnection, owner_id: str | None, adding: int) -> None:
        """QuotaExceededError when the owner's sessions would hold more than `max_nodes_per_account` nodes.

        Counting is O(nodes), so a count is reused (plus what this process added since) for up to
        `_RECOUNT_SECS` while it stays below `_MARGIN` of the limit; near the limit every create counts exactly.
        """
        limit = self.max_nodes_per_account
        if not limit or owner_id is None or adding <= 0:
            return
        now = time.monotonic()
        known = self._counts.get(owner_id)
        if known is not None and now - known[1] < _RECOUNT_SECS and known[0] + adding <= limit * _MARGIN:
            self._counts[owner_id] = (known[0] + adding, known[1])  # a rolled-back create only over-counts
            return
        count = int(await conn.scalar(_OWNED_NODES, {"owner": owner_id}) or 0)
        self._counts[owner_id] = (count + adding, now)
        if count + adding > limit:
            raise QuotaExceededError(
                f"the owner of this graph session has {count} nodes and the limit per account is {limit} "
                "([graph] max_nodes_per_account); delete nodes first",
                details={"limit": limit, "count": count},
            )

    # --- sharing -----------------------------------------------------------------------------------------------

    async def _owned(
        self, conn: AsyncConnection, session_id: str, who: Principal, *, claim: bool = False
    ) -> Grant:
        """The grant of the session's owner or an admin (who may manage shares); 404 or 403 for anyone else.

        An admin sharing a session nobody owns yet claims it; otherwise an unclaimed session has no shares (404).
        """
        grant = await (self.claim if claim and who.is_admin else self.grant)(conn, session_id, who)
        if grant.unclaimed:
            raise missing(session_id)
        grant.check(who, "read")
        if grant.owner_id != who.user_id and not who.is_admin:
            raise ForbiddenError(
                f"only the owner of graph session '{session_id}' (or an admin) manages its shares"
            )
        return grant

    async def check_manager(self, conn: AsyncConnection, session_id: str, who: Principal) -> None:
        """404 or 403 unless `who` may manage the session's shares (an admin also a session nobody owns yet)."""
        grant = await self.grant(conn, session_id, who)
        if not (grant.unclaimed and who.is_admin):
            await self._owned(conn, session_id, who)

    async def share(
        self,
        conn: AsyncConnection,
        session_id: str,
        who: Principal,
        user_id: str,
        user_name: str,
        writable: bool,
    ) -> ShareEntry:
        """Share the session with a user (read-only or read-write); sharing again changes the access."""
        grant = await self._owned(conn, session_id, who, claim=True)
        who.require("write", "sharing a graph session")
        if user_id == grant.owner_id:
            raise InvalidRequestError(f"'{user_name}' owns graph session '{session_id}' already")
        values = {"session_id": session_id, "user_id": user_id, "user_name": user_name, "writable": writable}
        added = await conn.execute(
            insert_ignore(conn, graph_shares, "session_id", "user_id").values(**values)
        )
        if not added.rowcount:
            await conn.execute(
                update(graph_shares)
                .where(graph_shares.c.session_id == session_id, graph_shares.c.user_id == user_id)
                .values(user_name=user_name, writable=writable)
            )
        return ShareEntry(user_id, user_name, writable)

    async def unshare(
        self, conn: AsyncConnection, session_id: str, who: Principal, user_id: str, name: str
    ) -> None:
        """Stop sharing the session with a user (404 when it was not shared with them)."""
        await self._owned(conn, session_id, who)
        gone = await conn.execute(
            delete(graph_shares).where(
                graph_shares.c.session_id == session_id, graph_shares.c.user_id == user_id
            )
        )
        if not gone.rowcount:
            raise NotFoundError(f"graph session '{session_id}' is not shared with '{name}'")

    async def shares(
        self, conn: AsyncConnection, session_id: str, who: Principal
    ) -> tuple[str, list[ShareEntry]]:
        """The session's owner id and the users it is shared with (owner or admin only)."""
        grant = await self._owned(conn, session_id, who)
        rows = (
            await conn.execute(
                select(graph_shares)
                .where(graph_shares.c.session_id == session_id)
                .order_by(graph_shares.c.user_name)
            )
        ).all()
        assert grant.owner_id is not None
        return grant.owner_id, [ShareEntry(row.user_id, row.user_name, bool(row.writable)) for row in rows]

    async def sessions(self, conn: AsyncConnection, who: Principal) -> list[SessionEntry]:
        """The sessions the principal owns or that are shared with them, by id."""
        owned = select(graph_sessions.c.session_id, graph_sessions.c.owner_id).where(
            graph_sessions.c.owner_id == who.user_id
        )
        shared = select(graph_sessions.c.session_id, graph_sessions.c.owner_id, graph_shares.c.writable).join(
            graph_shares,
            and_(
                graph_shares.c.session_id == graph_sessions.c.session_id,
                graph_shares.c.user_id == who.user_id,
            ),
        )
        entries = [
            SessionEntry(row.session_id, row.owner_id, "owner") for row in (await conn.execute(owned)).all()
        ]
        entries += [
            SessionEntry(row.session_id, row.owner_id, "write" if row.writable else "read")
            for row in (await conn.execute(shared)).all()
        ]
        return sorted(entries, key=lambda entry: entry.session_id)


async def _has_nodes(conn: AsyncConnection, session_id: str) -> bool:
    query: Any = select(exists().where(graph_nodes.c.session_id == session_id))
    return bool(await conn.scalar(query))
