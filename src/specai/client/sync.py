"""The `/sync/*` routes for a pinned SpecaiClient: a session's sync status and settings, pulling now, conflicts,
and the two halves of an exchange (`request` from one member, `apply` on another)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

import msgspec

from specai.client.http import SpecaiClient
from specai.server.schemas.sync import (
    ConflictsOut,
    EnableIn,
    EnableOut,
    GraphSyncPayload,
    GraphSyncPayloadIn,
    SyncApplyOut,
    SyncNowOut,
    SyncRequestIn,
    SyncRequestOut,
    SyncStatusOut,
)

DEFAULT_GRAPH = "default"


class SyncClient:
    """Graph sync of one server, over `client`'s pinned connection and token (a `mesh` or `admin` account)."""

    def __init__(self, client: SpecaiClient) -> None:
        self.client = client

    def status(self, session_id: str, graph: str = DEFAULT_GRAPH) -> SyncStatusOut:
        """GET /sync/status/{session}/{graph}: enabled, version vector, last sync, pending changes, peers."""
        return self.client._call("GET", f"/sync/status/{_path(session_id, graph)}", SyncStatusOut)

    def enable(self, session_id: str, enabled: bool = True, graph: str = DEFAULT_GRAPH) -> EnableOut:
        """POST /sync/enable/{session}/{graph}: turn sync on (or off) for a session."""
        path = f"/sync/enable/{_path(session_id, graph)}"
        return self.client._call("POST", path, EnableOut, EnableIn(enabled))

    def now(self, session_id: str, graph: str = DEFAULT_GRAPH) -> SyncNowOut:
        """POST /sync/now/{session}/{graph}: the server pulls from every live peer at once; a result per peer."""
        return self.client._call("POST", f"/sync/now/{_path(session_id, graph)}", SyncNowOut)

    def conflicts(
        self, session_id: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> ConflictsOut:
        """GET /sync/conflicts: one page, newest first (`next_cursor` for the next)."""
        query = {"session_id": session_id, "limit": limit, "cursor": cursor}
        present = {key: value for key, value in query.items() if value is not None}
        path = "/sync/conflicts" + (f"?{urlencode(present)}" if present else "")
        return self.client._call("GET", path, ConflictsOut)

    def request(
        self,
        session_id: str,
        requesting_instance: str,
        vector: dict[str, int] | None = None,
        *,
        graph: str | None = None,
        limit: int | None = None,
    ) -> SyncRequestOut:
        """POST /sync/request: the changes past `vector` (all of them when None), one page."""
        body = SyncRequestIn(
            session_id=session_id,
            requesting_instance=requesting_instance,
            graph_name=graph,
            vector_clock=None if vector is None else {"versions": dict(vector)},
            limit=limit,
        )
        return self.client._call("POST", "/sync/request", SyncRequestOut, body)

    def apply(
        self, payload: GraphSyncPayload | dict[str, Any], sending_instance: str | None = None
    ) -> SyncApplyOut:
        """POST /sync/apply: apply a payload (as `request` returned it) on this server."""
        wire = msgspec.to_builtins(payload) if isinstance(payload, msgspec.Struct) else dict(payload)
        body = msgspec.convert({**wire, "sending_instance": sending_instance}, GraphSyncPayloadIn)
        return self.client._call("POST", "/sync/apply", SyncApplyOut, body)


def _path(session_id: str, graph: str) -> str:
    return f"{quote(session_id, safe='')}/{quote(graph, safe='')}"
