"""The mesh over HTTP: `/registry/*` (members, heartbeats, leader) and `/messages/*` (the per-recipient queue)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from litestar import delete, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath, JSONBody

from specai.errors import ConflictError
from specai.mesh import MemberInfo, check_instance_id
from specai.server.state import ServerState


class RegisterIn(msgspec.Struct):
    """`POST /registry/register`: the original's fields, plus where and how to reach the instance."""

    instance_id: str
    hostname: str
    port: int
    capabilities: list[str]
    agent_profiles: list[str]
    base_url: str | None = None
    fingerprint: str | None = None
    registered_at: dt.datetime | None = None


class HeartbeatIn(msgspec.Struct):
    """`POST /registry/heartbeat/{id}` (the body is optional and informational)."""

    status: str = "healthy"
    metrics: dict[str, Any] | None = None


class SendIn(msgspec.Struct):
    """`POST /messages/send/{source}`; no `target_instance` means a broadcast to every other member."""

    message_type: Any
    payload: Any = None
    target_instance: str | None = None
    correlation_id: str | None = None


class AckIn(msgspec.Struct):
    """`POST /messages/ack/{instance_id}`."""

    message_ids: list[str]


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """The registry and message routes, bound to this server's state."""

    async def peers() -> dict[str, Any]:
        view = await server.mesh().view()
        return {"leader_id": view.leader_id, "peers": [m.as_dict(view.leader_id) for m in view.members]}

    @post("/registry/register", operation_id="MeshRegister", tags=["mesh"], status_code=200)
    async def register(data: JSONBody[RegisterIn]) -> dict[str, Any]:
        """Add (or refresh) a member; answers the leader and every member, this server included."""
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
        stamp = data.registered_at
        if stamp is not None:
            stamp = (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        await server.mesh().register(info, stamp)
        listing = await peers()
        return {
            "success": True,
            "instance_id": data.instance_id,
            "is_leader": listing["leader_id"] == data.instance_id,
            **listing,
        }

    @get("/registry/agents", operation_id="MeshMembers", tags=["mesh"])
    async def members() -> dict[str, Any]:
        """Every member with its status (`live`/`stale`), the leader, and this server's own id."""
        listing = await peers()
        return {
            "instances": listing["peers"],
            "leader_id": listing["leader_id"],
            "self_id": server.instance_id,
        }

    @post(
        "/registry/heartbeat/{instance_id:str}", operation_id="MeshHeartbeat", tags=["mesh"], status_code=200
    )
    async def heartbeat(
        instance_id: FromPath[str], data: JSONBody[HeartbeatIn | None] = None
    ) -> dict[str, Any]:
        """Record a member as alive; 404 `unknown_instance` (with a hint) tells it to register again."""
        await server.mesh().heartbeat(instance_id)
        listing = await peers()
        return {"acknowledged": True, "should_sync": False, **listing}

    @delete(
        "/registry/deregister/{instance_id:str}",
        operation_id="MeshDeregister",
        tags=["mesh"],
        status_code=204,
    )
    async def deregister(instance_id: FromPath[str]) -> None:
        """Remove a member (404 if unknown; 409 for this server itself, which keeps its rank)."""
        _not_self(server, instance_id)
        await server.mesh().deregister(instance_id)

    @post("/messages/send/{source:str}", operation_id="MeshSend", tags=["mesh"], status_code=200)
    async def send(source: FromPath[str], data: JSONBody[SendIn]) -> dict[str, Any]:
        """Queue a message; the source and the target must be members (404), nothing is stored on any error."""
        message, recipients = await server.messages().send(
            source, data.target_instance, data.message_type, data.payload, data.correlation_id
        )
        status = (
            "queued" if recipients else "no_recipients"
        )  # a broadcast with no other member stores nothing
        return {"message_id": message.message_id, "status": status, "delivered_to": recipients}

    @get("/messages/{instance_id:str}", operation_id="MeshInbox", tags=["mesh"])
    async def inbox(instance_id: FromPath[str]) -> dict[str, Any]:
        """Messages not yet acknowledged by this recipient, oldest first."""
        check_instance_id(instance_id)
        found = await server.messages().inbox(instance_id)
        if not found:
            await server.mesh().member(
                instance_id
            )  # 404 for a name that is no member and has nothing waiting
        return {"messages": [m.as_dict() for m in found]}

    @post("/messages/ack/{instance_id:str}", operation_id="MeshAck", tags=["mesh"], status_code=204)
    async def ack(instance_id: FromPath[str], data: JSONBody[AckIn]) -> None:
        """Acknowledge messages for this recipient only (others still receive them)."""
        check_instance_id(instance_id)
        await server.messages().ack(instance_id, data.message_ids)

    return [register, members, heartbeat, deregister, send, inbox, ack]


def _not_self(server: ServerState, instance_id: str) -> None:
    if instance_id == server.instance_id:
        raise ConflictError(f"'{instance_id}' is this server's own instance id; it manages its own entry")
