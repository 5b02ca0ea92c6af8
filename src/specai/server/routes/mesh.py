"""The mesh over HTTP: `/registry/*` (members, heartbeats, leader, peer tokens) and `/messages/*` (the queue).

Every route needs a `mesh` or `admin` account (403 for `user`), and an account acts only for the instance ids it
registered (403 otherwise); a peer token acts only for the instance it names.
"""

from __future__ import annotations

from typing import Annotated

from litestar import Request, delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter

from specai.errors import ConflictError, ForbiddenError, InvalidRequestError
from specai.ids import check_instance_id
from specai.mesh.peer_token import bound_instance
from specai.mesh.queue import INBOX_MAX_PAGE, INBOX_PAGE, parse_cursor
from specai.mesh.registry import MemberInfo
from specai.server.errors import error_responses
from specai.server.schemas.mesh import (
    AckIn,
    HeartbeatIn,
    HeartbeatOut,
    InboxOut,
    MemberOut,
    MembersOut,
    MeshMessageOut,
    PeerTokenIn,
    PeerTokenOut,
    RegisterIn,
    RegisterOut,
    SendIn,
    SendOut,
)
from specai.server.security import mesh_only, principal
from specai.server.state import ServerState

MESH = ["mesh"]
LOOKUP = error_responses(401, 403, 404)  # 404 `unknown_instance`: register first
# 409: this server's own entry, a member quota or a full inbox; 422: an unknown message_type
CHANGE = error_responses(401, 403, 404, 409, 413, 422)


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """The registry and message routes, bound to this server's state; all behind the `mesh_only` guard."""

    async def peers() -> tuple[str | None, list[MemberOut]]:
        view = await server.mesh().view()
        return view.leader_id, [MemberOut(**m.as_dict(view.leader_id)) for m in view.members]

    @post(
        "/registry/register",
        operation_id="MeshRegister",
        status_code=200,
        responses=error_responses(401, 403, 409, 413),
        tags=MESH,
        guards=[mesh_only],
    )
    async def register(request: Request, data: JSONBody[RegisterIn]) -> RegisterOut:
        """Add (or refresh) a member owned by the caller's account; answers the leader and every member."""
        _not_self(server, data.instance_id)
        info = MemberInfo(
            data.instance_id,
            data.hostname,
            data.port,
            data.capabilities,
            data.agent_profiles,
            data.base_url,
            data.fingerprint,
        )
        await server.mesh().register(info, principal(request))
        leader, members = await peers()
        return RegisterOut(True, data.instance_id, leader == data.instance_id, leader, members)

    @get(
        "/registry/agents",
        operation_id="MeshMembers",
        responses=error_responses(401, 403),
        tags=MESH,
        guards=[mesh_only],
    )
    async def members() -> MembersOut:
        """Every member with its status (`live`/`stale`), the leader, and this server's own id."""
        leader, listed = await peers()
        return MembersOut(instances=listed, leader_id=leader, self_id=server.instance_id)

    @post(
        "/registry/heartbeat/{instance_id:str}",
        operation_id="MeshHeartbeat",
        status_code=200,
        responses=error_responses(401, 403, 404, 413),
        tags=MESH,
        guards=[mesh_only],
    )
    async def heartbeat(
        request: Request, instance_id: FromPath[str], data: JSONBody[HeartbeatIn | None] = None
    ) -> HeartbeatOut:
        """Record a member as alive; 404 `unknown_instance` (with a hint) tells it to register again."""
        check_instance_id(instance_id)
        await server.mesh().heartbeat(instance_id, principal(request))
        leader, listed = await peers()
        return HeartbeatOut(acknowledged=True, should_sync=False, leader_id=leader, peers=listed)

    @delete(
        "/registry/deregister/{instance_id:str}",
        operation_id="MeshDeregister",
        status_code=204,
        responses=error_responses(401, 403, 404, 409),
        tags=MESH,
        guards=[mesh_only],
    )
    async def deregister(request: Request, instance_id: FromPath[str]) -> None:
        """Remove a member (404 if unknown; 403 for another account's; 409 for this server itself)."""
        check_instance_id(instance_id)
        _not_self(server, instance_id)
        await server.mesh().deregister(instance_id, principal(request))

    @post(
        "/registry/peer-token",
        operation_id="MeshPeerToken",
        status_code=200,
        responses=error_responses(401, 403, 404, 413),
        tags=MESH,
        guards=[mesh_only],
    )
    async def peer_token(request: Request, data: JSONBody[PeerTokenIn]) -> PeerTokenOut:
        """A short-lived token (signed with this server's TLS key) with which member `source`, owned by the
        caller, may call member `audience` on its mesh routes; members never send each other passwords."""
        who = principal(request)
        if bound_instance(who) is not None:
            raise ForbiddenError("a peer token cannot obtain further peer tokens; use the registry account")
        check_instance_id(data.source, "source")
        check_instance_id(data.audience, "audience")
        if data.source == data.audience:
            raise InvalidRequestError("audience must be another member than source")
        await server.mesh().authorize(data.source, who)
        await server.mesh().member(data.audience)  # 404 for a non-member
        token, expires = server.issue_peer_token(data.source, data.audience)
        return PeerTokenOut(token=token, expires_at=expires, issuer=server.instance_id)

    @post(
        "/messages/send/{source:str}",
        operation_id="MeshSend",
        status_code=200,
        responses=CHANGE,
        tags=MESH,
        guards=[mesh_only],
    )
    async def send(request: Request, source: FromPath[str], data: JSONBody[SendIn]) -> SendOut:
        """Queue a message as `source` (the caller's member); source and target must be members (404), nothing is
        stored on any error; 409 `quota_exceeded` when a recipient's inbox is full."""
        check_instance_id(source, "source")
        if data.target_instance is not None:
            check_instance_id(data.target_instance, "target_instance")
        message, recipients = await server.messages().send(
            source,
            data.target_instance,
            data.message_type,
            data.payload,
            data.correlation_id,
            actor=principal(request),
        )
        status = "queued" if recipients else "no_recipients"  # a broadcast to nobody stores nothing
        return SendOut(message_id=message.message_id, status=status, delivered_to=recipients)

    @get(
        "/messages/{instance_id:str}",
        operation_id="MeshInbox",
        responses=LOOKUP,
        tags=MESH,
        guards=[mesh_only],
    )
    async def inbox(
        request: Request,
        instance_id: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=INBOX_MAX_PAGE)] = INBOX_PAGE,
        after: FromQuery[str | None] = None,
    ) -> InboxOut:
        """One page of the messages not yet acknowledged by this recipient, oldest first: at most `limit` and
        `[mesh] max_inbox_bytes` of payloads; `more` says others wait (read them with `after=<cursor>`)."""
        check_instance_id(instance_id)
        page = await server.messages().inbox(
            instance_id, limit, parse_cursor(after), actor=principal(request)
        )
        messages = [MeshMessageOut(**m.as_dict()) for m in page.messages]
        return InboxOut(messages=messages, more=page.more, cursor=page.cursor)

    @post(
        "/messages/ack/{instance_id:str}",
        operation_id="MeshAck",
        status_code=204,
        responses=error_responses(401, 403, 404, 413),
        tags=MESH,
        guards=[mesh_only],
    )
    async def ack(request: Request, instance_id: FromPath[str], data: JSONBody[AckIn]) -> None:
        """Acknowledge messages for this recipient only (others still receive them)."""
        check_instance_id(instance_id)
        await server.messages().ack(instance_id, data.message_ids, actor=principal(request))

    return [register, members, heartbeat, deregister, peer_token, send, inbox, ack]


def _not_self(server: ServerState, instance_id: str) -> None:
    if instance_id == server.instance_id:
        raise ConflictError(f"'{instance_id}' is this server's own instance id; it manages its own entry")
