"""The knowledge graph: nodes, edges, their pages, `/bootstrap`, and graph sessions with their shares."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

BOOTSTRAP_SESSION = "visionos-dashboard"  # the original's default


class NodeIn(msgspec.Struct):
    """`POST /graph/nodes`."""

    session_id: str
    node_type: str
    label: str
    properties: Any = None


class NodePropertiesIn(msgspec.Struct):
    """`PUT /graph/nodes/{id}`: the new properties, and the version they replace (optional)."""

    properties: Any
    version: int | None = None


class NodePatchIn(msgspec.Struct):
    """`PATCH /graph/nodes/{id}`: a new label and/or properties to merge (null removes a key)."""

    label: str | None = None
    properties: Any = None
    version: int | None = None


class EdgeIn(msgspec.Struct):
    """`POST /graph/edges`."""

    session_id: str
    source_id: int
    target_id: int
    edge_type: str
    predicate: str | None = None
    properties: Any = None
    weight: Any = 1.0


class EdgePatchIn(msgspec.Struct):
    """`PATCH /graph/edges/{id}`: predicate, weight, properties to merge."""

    predicate: str | None = None
    properties: Any = None
    weight: Any = None
    version: int | None = None


class BootstrapIn(msgspec.Struct):
    """`POST /bootstrap`."""

    session_id: str = BOOTSTRAP_SESSION


class ShareIn(msgspec.Struct):
    """`POST /graph/sessions/{session_id}/shares`: who to share with, and whether they may only read."""

    username: str
    read_only: bool = False


class NodeOut(msgspec.Struct):
    """A node (the original's NodeResponse plus `uid`, global, and `version`, which counts its writes)."""

    id: int
    uid: str
    version: int
    session_id: str
    node_type: str
    label: str
    properties: dict[str, Any]
    created_at: str
    updated_at: str


class EdgeOut(msgspec.Struct):
    """A directed, typed edge (the original's EdgeResponse plus `uid`, `version` and `updated_at`)."""

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
    created_at: str
    updated_at: str


class NodePageOut(msgspec.Struct):
    """One page of nodes, newest first; `next_cursor` fetches the next page (null on the last)."""

    nodes: list[NodeOut]
    count: int
    next_cursor: str | None


class EdgePageOut(msgspec.Struct):
    """One page of edges, newest first; `next_cursor` fetches the next page (null on the last)."""

    edges: list[EdgeOut]
    count: int
    next_cursor: str | None


class NodeDeletedOut(msgspec.Struct):
    """`DELETE /graph/nodes/{id}`: and how many edges went with it."""

    deleted: Literal["node"]
    id: int
    edges_deleted: int


class EdgeDeletedOut(msgspec.Struct):
    """`DELETE /graph/edges/{id}`."""

    deleted: Literal["edge"]
    id: int


class BootstrapOut(msgspec.Struct):
    """What `/bootstrap` did to the session's graph (201 when it created nodes, 200 for an update)."""

    session_id: str
    root_node_id: int | None
    nodes_created: int
    nodes_updated: int
    nodes_removed: int
    edges_created: int
    edges_removed: int


class GraphSessionOut(msgspec.Struct):
    """A graph session the caller may see: its owner's name and the caller's access (owner, write or read)."""

    session_id: str
    owner: str
    access: str


class GraphSessionListOut(msgspec.Struct):
    """`GET /graph/sessions`."""

    sessions: list[GraphSessionOut]


class ShareOut(msgspec.Struct):
    """One user a session is shared with, and their access (write or read)."""

    username: str
    access: str


class SharesOut(msgspec.Struct):
    """`GET /graph/sessions/{session_id}/shares`."""

    session_id: str
    owner: str
    shares: list[ShareOut]


class SharedOut(msgspec.Struct):
    """`POST /graph/sessions/{session_id}/shares`: the share as it now stands."""

    session_id: str
    username: str
    access: str


class UnsharedOut(msgspec.Struct):
    """`DELETE /graph/sessions/{session_id}/shares/{username}`."""

    session_id: str
    unshared: str
