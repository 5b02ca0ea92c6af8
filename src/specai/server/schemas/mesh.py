"""The mesh: registry members, heartbeats, peer tokens and the message queue (`/registry/*`, `/messages/*`)."""

from __future__ import annotations

from typing import Any

import msgspec


class RegisterIn(msgspec.Struct):
    """`POST /registry/register`: the original's fields, plus where and how to reach the instance. A client's
    `registered_at` is ignored: the registry assigns ranks."""

    instance_id: str
    hostname: str
    port: int
    capabilities: list[str]
    agent_profiles: list[str]
    base_url: str | None = None
    fingerprint: str | None = None


class HeartbeatIn(msgspec.Struct):
    """`POST /registry/heartbeat/{id}` (the body is optional and informational)."""

    status: str = "healthy"
    metrics: dict[str, Any] | None = None


class PeerTokenIn(msgspec.Struct):
    """`POST /registry/peer-token`: let member `source` (the caller's) call member `audience` for a minute or two."""

    source: str
    audience: str


class SendIn(msgspec.Struct):
    """`POST /messages/send/{source}`; no `target_instance` means a broadcast to every other member."""

    message_type: Any
    payload: Any = None
    target_instance: str | None = None
    correlation_id: str | None = None


class AckIn(msgspec.Struct):
    """`POST /messages/ack/{instance_id}` (at most 1000 ids)."""

    message_ids: list[str]


class MemberOut(msgspec.Struct):
    """A member as the registry sees it: the original's MeshInstance plus `base_url`, `fingerprint`, `status`."""

    instance_id: str
    hostname: str
    port: int
    capabilities: list[str]
    is_leader: bool
    last_heartbeat: str
    created_at: str
    agent_profiles: list[str]
    base_url: str
    fingerprint: str | None
    status: str


class RegisterOut(msgspec.Struct):
    """`POST /registry/register`: the registered member, the leader and every member."""

    success: bool
    instance_id: str
    is_leader: bool
    leader_id: str | None
    peers: list[MemberOut]


class MembersOut(msgspec.Struct):
    """`GET /registry/agents`: every member, the leader, and this server's own instance id."""

    instances: list[MemberOut]
    leader_id: str | None
    self_id: str


class HeartbeatOut(msgspec.Struct):
    """`POST /registry/heartbeat/{id}`: acknowledged, with the current leader and members."""

    acknowledged: bool
    should_sync: bool
    leader_id: str | None
    peers: list[MemberOut]


class PeerTokenOut(msgspec.Struct):
    """A short-lived token for one member to call another; `expires_at` is in Unix seconds."""

    token: str
    expires_at: int
    issuer: str


class SendOut(msgspec.Struct):
    """`POST /messages/send/{source}`: `queued`, or `no_recipients` for a broadcast to nobody (nothing stored)."""

    message_id: str
    status: str
    delivered_to: list[str]


class MeshMessageOut(msgspec.Struct):
    """A queued message, in the original's shape; `message_type` is a name or `{"Custom": name}`."""

    message_id: str
    source_instance: str
    target_instance: str | None
    message_type: str | dict[str, str]
    payload: Any
    correlation_id: str | None
    created_at: str


class InboxOut(msgspec.Struct):
    """One page of an inbox, oldest first; `cursor` (when `more`) is the `after` of the next page."""

    messages: list[MeshMessageOut]
    more: bool
    cursor: str | None
