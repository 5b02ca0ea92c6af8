"""`GraphSyncPayload` on the wire: the changes past a version vector, the range they cover, and the session owner."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from specai.errors import UnprocessableError
from specai.graph.sync.change import SyncChange, from_wire
from specai.graph.sync.journal import Vector

SyncType = Literal["full", "incremental"]
MAX_CHANGES = 10_000  # per payload


def parse_vector(value: Any, name: str = "vector_clock") -> Vector:
    """A version vector from `{"versions": {...}}`, its JSON text (as the original sent it), or null/""/"{}"."""
    if value is None or value == "" or value == {}:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise UnprocessableError(f"{name} is not JSON") from None
        if value == {}:
            return {}
    versions = value.get("versions") if isinstance(value, dict) else None
    if not isinstance(versions, dict) or not all(
        isinstance(k, str) and k and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in versions.items()
    ):
        raise UnprocessableError(f'{name} must be {{"versions": {{"<instance id>": <seq>, ...}}}}')
    return {k: v for k, v in versions.items() if v > 0}


def vector_wire(vector: Vector) -> dict[str, Any]:
    """A version vector as the wire shows it."""
    return {"versions": dict(sorted(vector.items()))}


@dataclass(frozen=True)
class SyncPayload:
    """Changes of one session from `since` up to `through` (per origin); `more` when a page was cut short."""

    session_id: str
    graph_name: str
    changes: list[SyncChange]
    since: Vector = field(default_factory=dict)
    through: Vector = field(default_factory=dict)
    more: bool = False
    owner: str | None = None
    correlation_id: str | None = None

    @property
    def sync_type(self) -> SyncType:
        """`full` when it starts from nothing, `incremental` otherwise."""
        return "incremental" if any(self.since.values()) else "full"

    def wire(self) -> dict[str, Any]:
        """The GraphSyncPayload body."""
        nodes: list[dict[str, Any]] = []
        edges: list[dict[str, Any]] = []
        tombstones: list[dict[str, Any]] = []
        for change in self.changes:
            body = change.wire(self.session_id)
            if change.operation == "delete":
                tombstones.append(body)
            else:
                (nodes if change.kind == "node" else edges).append(body)
        return {
            "sync_type": self.sync_type,
            "session_id": self.session_id,
            "graph_name": self.graph_name,
            "vector_clock": vector_wire(self.through),
            "since_clock": vector_wire(self.since),
            "nodes": nodes,
            "edges": edges,
            "tombstones": tombstones,
            "more": self.more,
            "owner": self.owner,
            "correlation_id": self.correlation_id,
            "conflict_info": None,
        }

    @classmethod
    def from_wire(cls, body: dict[str, Any], default_graph: str) -> SyncPayload:
        """A payload from its wire form; UnprocessableError (422) naming what is wrong."""
        nodes, edges, tombstones = (body.get(name) or [] for name in ("nodes", "edges", "tombstones"))
        if not all(isinstance(items, list) for items in (nodes, edges, tombstones)):
            raise UnprocessableError("nodes, edges and tombstones must be lists")
        if len(nodes) + len(edges) + len(tombstones) > MAX_CHANGES:
            raise UnprocessableError(f"a payload holds at most {MAX_CHANGES} changes; send pages")
        for items, what in ((nodes, "nodes"), (edges, "edges"), (tombstones, "tombstones")):
            if not all(isinstance(item, dict) for item in items):
                raise UnprocessableError(f"every item of {what} must be an object")
        changes = [from_wire("node", item) for item in nodes]
        changes += [from_wire("edge", item) for item in edges]
        changes += [from_wire("node", item, tombstone=True) for item in tombstones]
        owner = body.get("owner")
        if owner is not None and not isinstance(owner, str):
            raise UnprocessableError("owner must be a user name or null")
        return cls(
            session_id=str(body["session_id"]),
            graph_name=str(body.get("graph_name") or default_graph),
            changes=changes,
            since=parse_vector(body.get("since_clock"), "since_clock"),
            through=parse_vector(body.get("vector_clock")),
            more=bool(body.get("more", False)),
            owner=owner,
            correlation_id=body.get("correlation_id"),
        )
