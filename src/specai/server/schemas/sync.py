"""Graph sync between mesh members (`/sync/*`): the original's paths and field names, clocks as `{"versions": ...}`.

The synced entities inside a payload (`SyncedNode`, `SyncedEdge`, `Tombstone`) travel as the core writes and reads
them (specai.graph.sync.change); they are objects here so that a field the core adds is never dropped on the way.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

# Kept in step with specai.graph.sync.engine (a test checks): importing the engine here would load SQLAlchemy into
# every CLI command that only reads these shapes.
DEFAULT_PAGE = 1000
MAX_PAGE = 5000
MAX_BULK = 100  # graph names per /sync/bulk request

VectorText = Annotated[
    dict[str, Any] | str | None,
    msgspec.Meta(
        description='A version vector `{"versions": {"<instance id>": <seq>, ...}}`, the same as a JSON string '
        '(as the original sent it), or null / "" / "{}" for nothing held yet'
    ),
]


class VectorClock(msgspec.Struct):
    """A version vector: per origin instance, the highest contiguous change number held."""

    versions: dict[str, int]


class SyncRequestIn(msgspec.Struct):
    """`POST /sync/request`: a peer asks for every change past its vector, one page of `limit` changes."""

    session_id: str
    requesting_instance: str
    graph_name: str | None = None
    vector_clock: VectorText = None
    limit: Annotated[
        int | None,
        msgspec.Meta(description=f"changes per page, 1 to {MAX_PAGE} (default {DEFAULT_PAGE})"),
    ] = None


class GraphSyncPayload(msgspec.Struct):
    """The changes of one session from `since_clock` up to `vector_clock` (per origin); `more` when a page was cut
    short (ask again with `vector_clock` as your vector). `owner` is the session owner's user name, which must be
    the same on every member."""

    session_id: str
    graph_name: str
    sync_type: str
    vector_clock: VectorClock
    since_clock: VectorClock
    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]
    tombstones: list[dict[str, Any]]
    more: bool
    owner: str | None
    correlation_id: str | None
    conflict_info: Any


class SyncRequestOut(msgspec.Struct):
    """`POST /sync/request`: `message` is "Full sync completed" (from nothing) or "Incremental sync completed"."""

    success: bool
    message: str
    payload: GraphSyncPayload


class GraphSyncPayloadIn(msgspec.Struct):
    """`POST /sync/apply`: a GraphSyncPayload as `/sync/request` answers it (checked by the sync core: 422 names
    what is wrong). `sending_instance` names the member it came from when the caller is an account (a peer
    token names its member itself); it may also be given as a query parameter."""

    session_id: str
    graph_name: str | None = None
    sync_type: str | None = None
    vector_clock: VectorText = None
    since_clock: VectorText = None
    nodes: list[Any] | None = None
    edges: list[Any] | None = None
    tombstones: list[Any] | None = None
    more: bool = False
    owner: str | None = None
    correlation_id: str | None = None
    conflict_info: Any = None
    sending_instance: str | None = None


class ApplyStatsOut(msgspec.Struct):
    """What applying a payload did: the original's counts (every conflict is resolved, by the stamps), plus the
    changes already held (`duplicates`); `sync_type` is "Full" or "Incremental"."""

    nodes_applied: int
    edges_applied: int
    tombstones_applied: int
    conflicts_detected: int
    conflicts_resolved: int
    duplicates: int
    sync_type: str


class SyncApplyOut(msgspec.Struct):
    """`POST /sync/apply`: the stats and this member's version vector afterwards."""

    success: bool
    message: str
    stats: ApplyStatsOut
    vector_clock: VectorClock


class PeerOut(msgspec.Struct):
    """A peer of a synced session: what it last reported holding and when it last asked (`reported_at`) or sent
    (`pulled_at`), plus the coordinator's live view when it runs here: `state` (ok, refused, untrusted,
    unreachable, skew, not_enabled, pending), `last_error`, `last_ok_at`, `next_try_at`, `base_url`; null when
    unknown."""

    instance_id: str
    their_vector: VectorClock
    reported_at: str | None = None
    pulled_at: str | None = None
    state: str | None = None
    last_error: str | None = None
    last_ok_at: str | None = None
    next_try_at: str | None = None
    base_url: str | None = None


class SyncStatusOut(msgspec.Struct):
    """`GET /sync/status/{session_id}/{graph_name}`: the original's fields (`vector_clock` an object, not a JSON
    string; `last_sync_at` RFC 3339), plus the peers and whether this server's sync coordinator runs."""

    session_id: str
    graph_name: str
    sync_enabled: bool
    vector_clock: VectorClock
    last_sync_at: str | None
    pending_changes: int
    peers: list[PeerOut]
    instance_id: str
    coordinator_running: bool


class EnableIn(msgspec.Struct):
    """`POST /sync/enable/{session_id}/{graph_name}`."""

    enabled: bool


class EnableOut(msgspec.Struct):
    """`POST /sync/enable/...`: "Sync enabled for graph S/G" (or disabled)."""

    success: bool
    message: str
    enabled: bool


class SyncConfigOut(msgspec.Struct):
    """One graph's sync settings."""

    graph_name: str
    sync_enabled: bool
    conflict_resolution_strategy: str
    sync_interval_seconds: int
    last_sync_at: str | None


class SyncConfigsOut(msgspec.Struct):
    """`GET /sync/configs/{session_id}`: every graph of the session (a session holds one, `default`)."""

    success: bool
    session_id: str
    graphs: list[SyncConfigOut]


class BulkIn(msgspec.Struct):
    """`POST /sync/bulk/{session_id}`: turn sync on or off for several graphs of a session."""

    graphs: Annotated[list[str], msgspec.Meta(max_length=MAX_BULK)]
    enabled: bool


class BulkFailure(msgspec.Struct):
    """A graph `/sync/bulk` could not change, with the error and its code."""

    graph: str
    error: str
    code: str


class BulkOut(msgspec.Struct):
    """`POST /sync/bulk/{session_id}` when every graph changed (any failure answers 422 `bulk_failed`, with these
    same fields in `details`)."""

    success: bool
    message: str
    updated: list[str]
    failed: list[BulkFailure]


class ConfigureIn(msgspec.Struct):
    """`POST /sync/configure/{session_id}/{graph_name}`; a setting left null keeps its value. Both strategies,
    `vector_clock` and `last_write_wins`, mean per-field last-writer-wins by hybrid logical clock."""

    sync_enabled: bool
    conflict_resolution_strategy: str | None = None
    sync_interval_seconds: int | None = None


class ConfigOut(msgspec.Struct):
    """A graph's sync settings as they now stand."""

    sync_enabled: bool
    conflict_resolution_strategy: str
    sync_interval_seconds: int


class ConfigureOut(msgspec.Struct):
    """`POST /sync/configure/...`: "Sync configuration updated for graph S/G"."""

    success: bool
    message: str
    config: ConfigOut


class ConflictOut(msgspec.Struct):
    """A concurrent overwrite resolved here (the original's ConflictInfo, values as JSON rather than re-encoded
    strings): the field, both values, which won (`KeepLocal` or `AcceptRemote`) and both stamps."""

    id: int
    session_id: str
    graph_name: str
    entity_type: str
    entity_id: str
    field: str
    resolution: str
    local_version: Any
    remote_version: Any
    winner_stamp: str
    loser_stamp: str
    detected_at: str


class ConflictsOut(msgspec.Struct):
    """`GET /sync/conflicts`: one page, newest first; `next_cursor` is the `cursor` of the next page."""

    conflicts: list[ConflictOut]
    next_cursor: str | None


class SyncNowOut(msgspec.Struct):
    """`POST /sync/now/{session_id}/{graph_name}`: the coordinator's result for each peer it pulled from."""

    session_id: str
    graph_name: str
    peers: list[dict[str, Any]]
