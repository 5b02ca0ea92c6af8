"""Graph sync between mesh members over HTTP: `/sync/*`, the original's paths and field names.

Whose data: every route needs a `mesh` or `admin` account (403 for `user`, 401 without a token); mesh peer
tokens are accepted and act only for the member they name. The routes read and write only sessions sync is
enabled for here (`/sync/enable` and `/sync/configure` turn it on; everything else answers 404
`sync_not_enabled`), and the sync core refuses a payload for a session owned here by another user name than on
the sending member (409 `owner_mismatch`): a synced session has the same owner on every member.

Deliberate changes from the original: errors are the standard `{"error", "code", "details"?}` body; the status
`vector_clock` is an object; `/sync/bulk` answers 422 `bulk_failed` (not 200) when any graph failed; and
`/sync/conflicts` is paged (`limit`, `cursor`, `next_cursor`) instead of a bare array of the latest 100.
`POST /sync/now/{session_id}/{graph_name}` is new: it has this server's coordinator pull at once (any process of
several sharing one database does so itself, the leader or not).
"""

from __future__ import annotations

import datetime as dt
import inspect
from typing import Annotated, Any

import msgspec
from litestar import Request, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, JSONBody, QueryParameter

from specai.errors import (
    ForbiddenError,
    InvalidRequestError,
    SpecaiError,
    UnknownInstanceError,
    UnprocessableError,
)
from specai.graph.sync.engine import (
    DEFAULT_PAGE,
    PeerRecord,
    SyncEngine,
    SyncNotEnabledError,
)
from specai.graph.sync.payload import SyncPayload, parse_vector
from specai.graph.validate import DEFAULT_LIMIT, MAX_LIMIT
from specai.ids import check_instance_id, check_session_id
from specai.mesh.peer_token import bound_instance
from specai.server.errors import ERROR_STATUSES, error_responses
from specai.server.schemas.errors import ErrorBody
from specai.server.schemas.sync import (
    ApplyStatsOut,
    BulkFailure,
    BulkIn,
    BulkOut,
    ConfigOut,
    ConfigureIn,
    ConfigureOut,
    ConflictOut,
    ConflictsOut,
    EnableIn,
    EnableOut,
    GraphSyncPayload,
    GraphSyncPayloadIn,
    PeerOut,
    SyncApplyOut,
    SyncConfigOut,
    SyncConfigsOut,
    SyncNowOut,
    SyncRequestIn,
    SyncRequestOut,
    SyncStatusOut,
    VectorClock,
)
from specai.server.security import mesh_only, principal
from specai.server.state import ServerState
from specai.users.access import Principal

TAGS = ["sync"]
# what each status means on these routes, added to the server-wide description
_NOTES = {
    403: "a `user` account, or a peer token naming another member than `requesting_instance`/`sending_instance`",
    404: "`sync_not_enabled`: sync is off for that session on this server",
    409: "`owner_mismatch`: the session is owned here by another user name than on the sending member; "
    "`conflict`: a uid of the payload belongs to another session here",
    422: "`unknown_graph` (a session holds one graph, `default`), `clock_skew` (a change stamped too far in "
    "the future), `unprocessable` (a bad payload, vector or setting), `bulk_failed` (see /sync/bulk)",
    503: "`sync_not_running`: this server's sync coordinator is off (`[sync] enabled = false`)",
}
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description=f"page size, 1 to {MAX_LIMIT}")]
Cursor = Annotated[str | None, QueryParameter(description="`next_cursor` of the previous page")]
OneSession = Annotated[str | None, QueryParameter(description="only this session's conflicts")]
Sender = Annotated[
    str | None,
    QueryParameter(
        description="the member the payload comes from, for an account (a peer token names its member itself); "
        "the body field `sending_instance` does the same"
    ),
]


class SyncNotRunningError(SpecaiError):
    """This server runs no sync coordinator, so it cannot pull on request."""

    code = "sync_not_running"
    status = 503


class BulkFailedError(UnprocessableError):
    """`/sync/bulk` could not change some graphs (the others did change)."""

    code = "bulk_failed"


def _responses(*statuses: int) -> dict[int, ResponseSpec]:
    """`error_responses`, each described with what it means on the sync routes."""
    specs = error_responses(*statuses)
    for status, note in _NOTES.items():
        if status in specs:
            specs[status] = ResponseSpec(
                data_container=ErrorBody,
                description=f"{ERROR_STATUSES[status]}; on sync routes: {note}",
                generate_examples=False,
            )
    return specs


def routes(server: ServerState) -> list[HTTPRouteHandler]:
    """The sync routes, bound to this server's state; all behind the `mesh_only` guard."""
    return [*_protocol_routes(server), *_settings_routes(server), *_reading_routes(server)]


def _protocol_routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/sync/request`, `/sync/apply` and `/sync/now`: moving changes between members."""

    def sync() -> SyncEngine:
        return server.sync()

    @post(
        "/sync/request",
        operation_id="SyncRequest",
        status_code=200,
        responses=_responses(401, 403, 404, 413, 422),
        tags=TAGS,
        guards=[mesh_only],
    )
    async def request_changes(request: Request, data: JSONBody[SyncRequestIn]) -> SyncRequestOut:
        """Every change held here past the caller's `vector_clock`, one page (`payload.more`: ask again with
        `payload.vector_clock`); the vector is remembered as what `requesting_instance` holds."""
        requester = await _acting(server, principal(request), data.requesting_instance, "requesting_instance")
        vector = parse_vector(data.vector_clock)
        limit = DEFAULT_PAGE if data.limit is None else data.limit
        payload = await sync().request(data.session_id, data.graph_name, vector, limit, requester=requester)
        kind = "Full" if payload.sync_type == "full" else "Incremental"
        return SyncRequestOut(True, f"{kind} sync completed", _payload_out(payload))

    @post(
        "/sync/apply",
        operation_id="SyncApply",
        status_code=200,
        responses=_responses(401, 403, 404, 409, 413, 422),
        tags=TAGS,
        guards=[mesh_only],
    )
    async def apply(
        request: Request, data: JSONBody[GraphSyncPayloadIn], sending_instance: Sender = None
    ) -> SyncApplyOut:
        """Apply one GraphSyncPayload in one transaction; applying the same payload again changes neither the
        graph nor its changelog. The body is bounded by `[server] max_body_bytes` (10,000 changes at most)."""
        named = sending_instance if sending_instance is not None else data.sending_instance
        if sending_instance is not None and data.sending_instance not in (None, sending_instance):
            raise InvalidRequestError("sending_instance differs between the query and the body")
        who = principal(request)
        sender = (
            bound_instance(who) if named is None else await _acting(server, who, named, "sending_instance")
        )
        body = msgspec.structs.asdict(data)
        del body["sending_instance"]
        stats = await sync().apply(SyncPayload.from_wire(body, "default"), sender=sender)
        return SyncApplyOut(
            success=True,
            message="Sync applied successfully",
            stats=ApplyStatsOut(**stats.as_dict()),
            vector_clock=_vector(stats.vector),
        )

    @post(
        "/sync/now/{session_id:str}/{graph_name:str}",
        operation_id="SyncNow",
        status_code=200,
        responses=_responses(401, 403, 404, 413, 422),
        tags=TAGS,
        guards=[mesh_only],
    )
    async def now(session_id: FromPath[str], graph_name: FromPath[str]) -> SyncNowOut:
        """Have this server's coordinator pull the session from every live peer at once; one result per peer.
        503 `sync_not_running` when the coordinator is off here, 404 `sync_not_enabled` for a session not synced.

        With several processes on one database only the leader runs the coordinator's cycles, but any process
        answers this (a load balancer picks one): it runs the round itself, from this process, with the same
        peers and pins. That is safe beside the leader's cycles: applying a page twice changes nothing."""
        link = getattr(server, "sync_link", None)
        config = await sync().config(session_id, graph_name)  # a bad session id or graph name first
        if link is None:
            raise SyncNotRunningError(
                "the sync coordinator is not running on this server: set [sync] enabled = true in its config "
                "and restart it"
            )
        if not config.sync_enabled:
            raise SyncNotEnabledError(
                f"sync is not enabled for graph session '{config.session_id}' on this member; "
                f"turn it on with `specai sync enable {config.session_id}`"
            )
        results = await link.run_now(config.session_id)
        return SyncNowOut(config.session_id, config.graph_name, [dict(r) for r in results])

    return [request_changes, apply, now]


def _settings_routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/sync/enable`, `/sync/bulk` and `/sync/configure`: which sessions are synced, and how."""

    def sync() -> SyncEngine:
        return server.sync()

    @post(
        "/sync/enable/{session_id:str}/{graph_name:str}",
        operation_id="SyncEnable",
        status_code=200,
        responses=_responses(401, 403, 404, 413, 422),
        tags=TAGS,
        guards=[mesh_only],
    )
    async def enable(
        session_id: FromPath[str], graph_name: FromPath[str], data: JSONBody[EnableIn]
    ) -> EnableOut:
        """Turn sync on or off for a session (other settings kept); turning it on offers peers everything the
        session already holds."""
        config = await sync().set_enabled(session_id, graph_name, data.enabled)
        verb = "enabled" if config.sync_enabled else "disabled"
        return EnableOut(
            True, f"Sync {verb} for graph {config.session_id}/{config.graph_name}", config.sync_enabled
        )

    @post(
        "/sync/bulk/{session_id:str}",
        operation_id="SyncBulk",
        status_code=200,
        responses=_responses(401, 403, 404, 413, 422),
        tags=TAGS,
        guards=[mesh_only],
    )
    async def bulk(session_id: FromPath[str], data: JSONBody[BulkIn]) -> BulkOut:
        """Turn sync on or off for several graphs of a session. 200 only when every one changed; otherwise 422
        `bulk_failed` with `details` = {success, message, updated, failed: [{graph, error, code}]} (those in
        `updated` did change). The original always answered 200."""
        check_session_id(session_id)
        verb = "enabled" if data.enabled else "disabled"
        updated: list[str] = []
        failed: list[BulkFailure] = []
        for name in dict.fromkeys(data.graphs):
            try:
                await sync().set_enabled(session_id, name, data.enabled)
            except SpecaiError as exc:
                if exc.status >= 500:
                    raise
                failed.append(BulkFailure(name, exc.message, exc.code))
            else:
                updated.append(name)
        message = f"Sync {verb} for {len(updated)} graph{'' if len(updated) == 1 else 's'}"
        if failed:
            names = ", ".join(f.graph for f in failed)
            raise BulkFailedError(
                f"{message}; {len(failed)} failed: {names}",
                details={
                    "success": False,
                    "message": message,
                    "updated": updated,
                    "failed": [msgspec.structs.asdict(f) for f in failed],
                },
            )
        return BulkOut(True, message, updated, failed)

    @post(
        "/sync/configure/{session_id:str}/{graph_name:str}",
        operation_id="SyncConfigure",
        status_code=200,
        responses=_responses(401, 403, 404, 413, 422),
        tags=TAGS,
        guards=[mesh_only],
    )
    async def configure(
        session_id: FromPath[str], graph_name: FromPath[str], data: JSONBody[ConfigureIn]
    ) -> ConfigureOut:
        """Change a session's sync settings (null keeps a setting): on/off, the strategy (`vector_clock` or
        `last_write_wins`, both per-field last-writer-wins by hybrid logical clock), the interval (1 to 86400 s)."""
        config = await sync().configure(
            session_id,
            graph_name,
            data.sync_enabled,
            data.conflict_resolution_strategy,
            data.sync_interval_seconds,
        )
        return ConfigureOut(
            True,
            f"Sync configuration updated for graph {config.session_id}/{config.graph_name}",
            ConfigOut(config.sync_enabled, config.conflict_resolution_strategy, config.sync_interval_seconds),
        )

    return [enable, bulk, configure]


def _reading_routes(server: ServerState) -> list[HTTPRouteHandler]:
    """`/sync/status`, `/sync/configs` and `/sync/conflicts`."""

    def sync() -> SyncEngine:
        return server.sync()

    @get(
        "/sync/status/{session_id:str}/{graph_name:str}",
        operation_id="SyncStatus",
        responses=_responses(401, 403, 404, 422),
        tags=TAGS,
        guards=[mesh_only],
    )
    async def status(session_id: FromPath[str], graph_name: FromPath[str]) -> SyncStatusOut:
        """Whether the session is synced here, its version vector, last sync, how many held changes some known
        peer has not reported yet, and each peer (with the coordinator's view of it when it runs here)."""
        found = await sync().status(session_id, graph_name)
        link = getattr(server, "sync_link", None)
        live = await _live_peers(link, found.config.session_id)
        return SyncStatusOut(
            session_id=found.config.session_id,
            graph_name=found.config.graph_name,
            sync_enabled=found.config.sync_enabled,
            vector_clock=_vector(found.vector),
            last_sync_at=_when(found.config.last_sync_at),
            pending_changes=found.pending_changes,
            peers=_merge_peers(found.peers, live),
            instance_id=server.instance_id,
            coordinator_running=link is not None,
        )

    @get(
        "/sync/configs/{session_id:str}",
        operation_id="SyncConfigs",
        responses=_responses(401, 403, 404),
        tags=TAGS,
        guards=[mesh_only],
    )
    async def configs(session_id: FromPath[str]) -> SyncConfigsOut:
        """The sync settings of every graph of a session (it holds one, `default`; defaults if never set)."""
        found = await sync().configs(session_id)
        return SyncConfigsOut(True, found[0].session_id, [_config(c.as_dict()) for c in found])

    @get(
        "/sync/conflicts",
        operation_id="SyncConflicts",
        responses=_responses(401, 403),
        tags=TAGS,
        guards=[mesh_only],
    )
    async def conflicts(
        session_id: OneSession = None, limit: Limit = DEFAULT_LIMIT, cursor: Cursor = None
    ) -> ConflictsOut:
        """Concurrent overwrites resolved here, newest first, optionally of one session; `next_cursor` pages on.
        (The original answered a bare array of the latest 100.)"""
        page = await sync().conflicts(session_id, limit, cursor)
        return ConflictsOut([ConflictOut(**c) for c in page.items], page.next_cursor)

    return [status, configs, conflicts]


async def _acting(server: ServerState, who: Principal, named: str, field: str) -> str | None:
    """The member whose vector a request reports (it feeds tombstone collection): the one a peer token names
    (403 for another), any for an admin, or an instance the calling mesh account registered here; None (nothing
    recorded) for any other name a mesh account gives."""
    named = check_instance_id(named, field)
    bound = bound_instance(who)
    if bound is not None:
        if bound != named:
            raise ForbiddenError(f"this peer token acts for member '{bound}' only, not '{named}' ({field})")
        return named
    if who.is_admin:
        return named
    try:
        await server.mesh().authorize(named, who)
    except (ForbiddenError, UnknownInstanceError):
        return None
    return named


def _vector(vector: dict[str, int]) -> VectorClock:
    return VectorClock(dict(sorted(vector.items())))


def _payload_out(payload: SyncPayload) -> GraphSyncPayload:
    wire = payload.wire()
    return GraphSyncPayload(
        session_id=wire["session_id"],
        graph_name=wire["graph_name"],
        sync_type=wire["sync_type"],
        vector_clock=VectorClock(wire["vector_clock"]["versions"]),
        since_clock=VectorClock(wire["since_clock"]["versions"]),
        nodes=wire["nodes"],
        edges=wire["edges"],
        tombstones=wire["tombstones"],
        more=wire["more"],
        owner=wire["owner"],
        correlation_id=wire["correlation_id"],
        conflict_info=wire["conflict_info"],
    )


def _config(entry: dict[str, Any]) -> SyncConfigOut:
    return SyncConfigOut(**entry)


def _when(value: Any) -> str | None:
    """A time as RFC 3339: datetimes (naive ones are UTC), Unix seconds, or text as it came."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = dt.datetime.fromtimestamp(value, dt.UTC)
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)).isoformat()
    return str(value)


async def _live_peers(link: Any, session_id: str) -> list[dict[str, Any]]:
    """The coordinator's view of each peer of a session (none when it does not run here)."""
    if link is None:
        return []
    states = link.peer_states(session_id)
    if inspect.isawaitable(states):
        states = await states
    return [dict(state) for state in states or ()]


def _merge_peers(records: list[PeerRecord], live: list[dict[str, Any]]) -> list[PeerOut]:
    """One entry per peer, by instance id: what it reported here, and the coordinator's view of it."""
    peers = {
        r.instance_id: PeerOut(
            r.instance_id, _vector(r.their_vector), _when(r.reported_at), _when(r.pulled_at)
        )
        for r in records
    }
    for state in live:
        instance_id = state.get("instance_id")
        if not isinstance(instance_id, str):
            continue
        entry = peers.setdefault(instance_id, PeerOut(instance_id, VectorClock({})))
        entry.state = _text(state.get("state"))
        entry.last_error = _text(state.get("last_error"))
        entry.last_ok_at = _when(state.get("last_ok_at"))
        entry.next_try_at = _when(state.get("next_try_at"))
        entry.base_url = _text(state.get("base_url"))
    return [peers[name] for name in sorted(peers)]


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
