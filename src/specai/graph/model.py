"""The graph's values: stored nodes, edges and changelog rows, listing pages, and the plans bootstrap generates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Row

NODE_TYPES = ("entity", "concept", "fact", "message", "tool_result", "event", "goal")
EDGE_TYPES = (
    "RELATES_TO",
    "CAUSED_BY",
    "PART_OF",
    "MENTIONS",
    "FOLLOWS_FROM",
    "USES",
    "PRODUCES",
    "DEPENDS_ON",
)

T = TypeVar("T")


@dataclass(frozen=True)
class Node:
    """A node as stored; `uid` is global and `version` counts its writes (1 when created)."""

    id: int
    uid: str
    version: int
    session_id: str
    node_type: str
    label: str
    properties: dict[str, Any]
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> Node:
        """The node of a `graph_nodes` row (its columns are exactly these fields)."""
        return cls(**row._mapping)

    def as_dict(self) -> dict[str, Any]:
        """The wire shape (the original's NodeResponse plus `uid` and `version`)."""
        return {
            "id": self.id,
            "uid": self.uid,
            "version": self.version,
            "session_id": self.session_id,
            "node_type": self.node_type,
            "label": self.label,
            "properties": self.properties,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Edge:
    """A directed, typed edge between two nodes of the same session."""

    id: int
    uid: str
    version: int
    session_id: str
    source_id: int
    target_id: int
    edge_type: str
    predicate: str | None
    properties: dict[str, Any] | None
    weight: float
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def from_row(cls, row: Row[Any]) -> Edge:
        """The edge of a `graph_edges` row (its columns are exactly these fields)."""
        return cls(**row._mapping)

    def as_dict(self) -> dict[str, Any]:
        """The wire shape (the original's EdgeResponse plus `uid`, `version` and `updated_at`)."""
        return {
            "id": self.id,
            "uid": self.uid,
            "version": self.version,
            "session_id": self.session_id,
            "source_id": self.source_id,
            "target_id": self.target_id,
            "edge_type": self.edge_type,
            "predicate": self.predicate,
            "properties": self.properties,
            "weight": self.weight,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Change:
    """One changelog row: what happened to which entity, with a snapshot of it (before a delete, after otherwise)."""

    id: int
    session_id: str
    entity_type: str
    entity_id: int
    entity_uid: str
    operation: str
    version: int
    data: dict[str, Any] | None
    created_at: dt.datetime
    origin: str | None = None  # the mesh member a synced change came from; None when made here

    @classmethod
    def from_row(cls, row: Row[Any]) -> Change:
        """The change of a `graph_changelog` row (its columns are exactly these fields)."""
        return cls(**row._mapping)

    def as_dict(self) -> dict[str, Any]:
        """The change-stream event body (the original's keys plus `id`, `entity_uid`, `version` and `origin`)."""
        return {
            "id": self.id,
            "session_id": self.session_id,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "entity_uid": self.entity_uid,
            "operation": self.operation,
            "version": self.version,
            "timestamp": self.created_at.isoformat(),
            "data": self.data,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a listing, newest first; `next_cursor` fetches the following page (None on the last)."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class PlannedNode:
    """A node bootstrap wants to exist, found again on later runs by `key`."""

    key: str
    node_type: str
    label: str
    properties: dict[str, Any]


@dataclass(frozen=True)
class PlannedEdge:
    """An edge between two planned nodes (by key)."""

    source: str
    target: str
    edge_type: str
    predicate: str | None = None
    weight: float = 1.0


@dataclass(frozen=True)
class GraphPlan:
    """A whole generated graph (bootstrap): nodes by key, the root's key, and the edges between them."""

    root: str
    nodes: Sequence[PlannedNode]
    edges: Sequence[PlannedEdge]
    source: str  # written as `bootstrap_source` so a re-run recognises (and only touches) its own nodes


@dataclass(frozen=True)
class PlanResult:
    """What applying a plan did."""

    session_id: str
    root_node_id: int | None
    nodes_created: int = 0
    nodes_updated: int = 0
    nodes_removed: int = 0
    edges_created: int = 0
    edges_removed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The /bootstrap body."""
        return dict(self.__dict__)
