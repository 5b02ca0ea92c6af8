"""The graph sync coordinator: every `interval_secs`, pull each synced session from every live mesh member, and
push local commits to them within a second; bounded concurrency, a timeout per call, backoff per peer.

Whose data it touches: only graph sessions sync is enabled for on this server (`[sync] namespaces`, or enabled
through `/sync/enable`), exchanged only with members of this server's mesh registry that registered an https
address and a certificate fingerprint. Every call goes over TLS pinned to that fingerprint with a mesh bearer
token (the mesh login for the registry, else a peer token the registry signed); never to this server itself, never
to an address the registry did not list. What a peer sends is applied by the SyncEngine, in one transaction, after
its owner and clock checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import httpx

from specai.client.errors import response_error, transport_error
from specai.client.peer import Peer
from specai.config import SyncSettings
from specai.errors import AuthError, SpecaiError, TrustError
from specai.graph.feed import Notifier
from specai.graph.sync.engine import DEFAULT_GRAPH, SyncEngine, SyncNotEnabledError, SyncPosition
from specai.graph.sync.hlc import ClockSkewError
from specai.graph.sync.journal import Vector
from specai.graph.sync.payload import SyncPayload, parse_vector, vector_wire
from specai.mesh.registry import Member, MeshRegistry

log = logging.getLogger("specai.sync")

PeerState = Literal["ok", "refused", "untrusted", "unreachable", "skew", "not_enabled", "pending"]
CALL_TIMEOUT = 30.0  # one /sync call, a large page included
PUSH_DELAY = 0.2  # commits this close together go out in one push
MAX_DOUBLINGS = 32


class PeerSyncError(SpecaiError):
    """One exchange with a peer failed; `state` is what `peer_states` shows for that peer."""

    code = "sync_peer_failed"
    status = 502

    def __init__(self, state: PeerState, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.state: PeerState = state
        self.http_status = http_status


class Remote(Protocol):
    """How the coordinator calls one peer's `/sync` routes: the decoded JSON answer, or PeerSyncError."""

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `path`."""
        ...

    async def aclose(self) -> None:
        """Release the connection."""
        ...


Connect = Callable[[Member], "Remote | None"]  # None: it cannot be called yet


def refusal(status: int, code: str, message: str) -> PeerSyncError:
    """What an error answer of a peer's `/sync` route means for the sync with it."""
    if status in (401, 403):
        return PeerSyncError("refused", message, http_status=status)
    if code == "clock_skew":
        return PeerSyncError("skew", message, http_status=status)
    if code == "sync_not_enabled" or status == 404:
        return PeerSyncError("not_enabled", message, http_status=status)
    if status >= 500:
        return PeerSyncError("unreachable", f"it could not serve the sync: {message}", http_status=status)
    return PeerSyncError("refused", message, http_status=status)


def transport_failure(exc: SpecaiError) -> PeerSyncError:
    """A call that got no answer: a certificate other than the pinned one, a refused login, or no connection."""
    if isinstance(exc, PeerSyncError):
        return exc
    if isinstance(exc, TrustError):
        return PeerSyncError("untrusted", exc.message)
    if isinstance(exc, AuthError):
        return PeerSyncError("refused", exc.message)
    return PeerSyncError("unreachable", exc.message)


def local_refusal(exc: SpecaiError) -> PeerSyncError:
    """This server refused what a peer sent (its clock, its owner, its payload)."""
    if isinstance(exc, ClockSkewError):
        return PeerSyncError("skew", exc.message)
    if isinstance(exc, SyncNotEnabledError):
        return PeerSyncError("not_enabled", exc.message)
    return PeerSyncError("refused", f"its payload was refused here: {exc.message}")


class HttpRemote:
    """A peer's `/sync` routes over its pinned connection, each call bounded by its own timeout."""

    def __init__(self, peer: Peer, timeout: float = CALL_TIMEOUT) -> None:
        self.peer = peer
        self.timeout = timeout

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST one sync body; PeerSyncError for anything but a 200 with a JSON object."""
        try:
            async with asyncio.timeout(self.timeout):
                response = await self.peer.call("POST", path, json=body, operation_secs=self.timeout)
        except TimeoutError:
            raise PeerSyncError("unreachable", f"no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise transport_failure(transport_error(self.peer.address, exc)) from None
        except SpecaiError as exc:
            raise transport_failure(exc) from None
        if response.status_code != 200:
            error = response_error(response)
            raise refusal(response.status_code, error.remote_code, error.message)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise PeerSyncError("unreachable", f"{path} answered with something other than a JSON object")
        return answer

    async def aclose(self) -> None:
        """Close the pinned connection."""
        await self.peer.aclose()


def http_remotes(peer_for: Callable[[Member], Peer | None]) -> Connect:
    """Remotes over the pinned Peers a mesh link makes (`MeshLink.peer_for`)."""

    def connect(member: Member) -> Remote | None:
        peer = peer_for(member)
        return None if peer is None else HttpRemote(peer)

    return connect


def backoff(failures: int, interval: float, longest: float) -> float:
    """Seconds to wait after the `failures`-th failure in a row: the interval, doubled each time, capped at
    `longest` (never below the interval)."""
    doublings = min(max(failures - 1, 0), MAX_DOUBLINGS)
    return min(interval * 2**doublings, max(interval, longest))


def reachable(member: Member) -> bool:
    """A member can be pinned: an https base URL and a registered certificate fingerprint."""
    return bool(member.fingerprint) and member.base_url.startswith("https://")


def candidates(members: Iterable[Member], self_id: str) -> list[Member]:
    """The members to sync with: live, pinnable, never this server; in instance id order."""
    return sorted(
        (m for m in members if m.instance_id != self_id and m.live and reachable(m)),
        key=lambda m: m.instance_id,
    )


def _rfc3339(epoch: float | None) -> str | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat()


def _ahead(mine: Vector, theirs: Vector) -> bool:
    return any(seq > theirs.get(origin, 0) for origin, seq in mine.items())


@dataclass
class PeerSync:
    """The sync of one session with one peer, as `peer_states` shows it; `failures` in a row set the backoff."""

    instance_id: str
    base_url: str
    state: PeerState = "pending"
    last_error: str | None = None
    last_ok_at: float | None = None
    next_try_at: float | None = None
    failures: int = 0

    def as_dict(self, next_cycle: float | None) -> dict[str, Any]:
        """The route's per-peer entry (times as RFC 3339)."""
        upcoming = self.next_try_at if self.failures else next_cycle
        return {
            "instance_id": self.instance_id,
            "base_url": self.base_url,
            "state": self.state,
            "last_error": self.last_error,
            "last_ok_at": _rfc3339(self.last_ok_at),
            "next_try_at": _rfc3339(upcoming),
        }


class SyncLink:
    """Keeps this server's synced sessions converged with the mesh (see the module docstring for whose data)."""

    def __init__(
        self,
        settings: SyncSettings,
        engine: SyncEngine,
        registry: MeshRegistry,
        notifier: Notifier,
        connect: Connect,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self.notifier = notifier
        self.connect = connect
        self.clock = clock
        self.self_id = engine.origin
        self.interval = settings.interval_secs
        self._gate = asyncio.Semaphore(settings.max_concurrent_syncs)
        self._members: dict[str, Member] = {}  # the mesh as last read, this server left out
        self._entries: dict[tuple[str, str], PeerSync] = {}  # (session, peer)
        self._remotes: dict[str, tuple[tuple[str, str | None], Remote]] = {}  # peer -> (target, remote)
        self._tasks: dict[tuple[str, str, str], asyncio.Task[None]] = {}  # (pull|push, session, peer)
        self._watchers: dict[str, asyncio.Task[None]] = {}  # session -> waits for its commits
        self._dirty: set[tuple[str, str]] = set()  # (session, peer) to push to
        self._theirs: dict[tuple[str, str], Vector] = {}  # what a peer answered holding after our push
        self._next_cycle: float | None = None
        self._cycle_failing = False

    # --- running -------------------------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        """Enable the configured namespaces, then one cycle per interval until `stopping`; closes at the end."""
        try:
            await self.enable_namespaces()
            while not stopping.is_set():
                try:
                    await self.cycle()
                except Exception:
                    if not self._cycle_failing:
                        log.exception("a graph sync cycle failed; retrying every %g s", self.interval)
                    self._cycle_failing = True
                else:
                    if self._cycle_failing:
                        log.warning("graph sync cycles work again")
                    self._cycle_failing = False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.interval):
                        await stopping.wait()
        finally:
            await self.close()

    async def enable_namespaces(self) -> None:
        """Turn sync on for each `[sync] namespaces` entry (what the session held before is included)."""
        for entry in self.settings.namespaces:
            session_id, graph_name = entry["session_id"], entry.get("graph_name") or DEFAULT_GRAPH
            try:
                if not (await self.engine.config(session_id, graph_name)).sync_enabled:
                    await self.engine.set_enabled(session_id, graph_name, True)
                    log.info("graph sync enabled for session %r ([sync] namespaces)", session_id)
            except Exception as exc:  # one bad entry, or a database hiccup, must not stop the coordinator
                log.error("cannot enable graph sync for session %r ([sync] namespaces): %s", session_id, exc)

    async def cycle(self) -> None:
        """Read the mesh, start a pull from every due peer for every synced session, check pushes, collect."""
        await self._refresh()
        sessions = [session for session, _ in await self.engine.enabled_sessions()]
        self._watch(sessions)
        now = self.clock()
        self._next_cycle = now + self.interval
        peers = candidates(self._members.values(), self.self_id)
        # every registered member counts for collection, live or not: one that is down may hold what is collected
        known = [m.instance_id for m in self._members.values()]
        for session in sessions:
            for member in peers:
                entry = self._entry(session, member)
                if entry.failures and entry.next_try_at is not None and now < entry.next_try_at:
                    continue
                self._spawn("pull", session, member, functools.partial(self._pull_task, session, member))
            try:
                await self.engine.collect(session, known)
            except SpecaiError as exc:
                log.warning("tombstone collection of session %r failed: %s", session, exc)

    async def settle(self) -> None:
        """Wait until no pull or push is under way, those they start included (tests; shutdown cancels)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        """Stop every task and close every connection."""
        tasks = [*self._watchers.values(), *self._tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watchers.clear()
        self._tasks.clear()
        for _, remote in self._remotes.values():
            with contextlib.suppress(Exception):
                await remote.aclose()
        self._remotes.clear()

    # --- what the routes call --------------------------------------------------------------------------------

    def peer_states(self, session_id: str) -> list[dict[str, Any]]:
        """Every other member of the mesh and how the sync of `session_id` with it stands."""
        shown: list[dict[str, Any]] = []
        for member in sorted(self._members.values(), key=lambda m: m.instance_id):
            entry = self._entries.get((session_id, member.instance_id))
            entry = PeerSync(member.instance_id, member.base_url) if entry is None else replace(entry)
            if not reachable(member):
                entry.state = "untrusted"
                entry.last_error = (
                    "registered without an https address and a certificate fingerprint; not called"
                )
            elif not member.live and entry.state in ("ok", "pending"):
                entry.state = "unreachable"
                entry.last_error = f"no heartbeat since {member.last_heartbeat.isoformat()}; not called until it is live again"
            shown.append(entry.as_dict(self._next_cycle))
        return shown

    async def run_now(self, session_id: str) -> list[dict[str, Any]]:
        """Pull `session_id` from every live peer now, and push to it, whatever the backoff; one result each."""
        if not (await self.engine.config(session_id)).sync_enabled:
            raise SyncNotEnabledError(f"sync is not enabled for graph session '{session_id}' on this member")
        await self._refresh()

        async def one(member: Member) -> dict[str, Any]:
            entry = self._entry(session_id, member)
            pulled = pushed = 0
            error: str | None = None
            try:
                async with self._gate:
                    pulled = await self._pull(session_id, member)
                    pushed = await self._push(session_id, member)
            except PeerSyncError as exc:
                self._failed(entry, exc)
                error = exc.message
            except Exception as exc:
                log.exception("graph sync of session %r with %s failed here", session_id, member.instance_id)
                error = f"failed on this server: {exc}"
            else:
                self._ok(entry)
            return {
                "instance_id": member.instance_id,
                "state": entry.state,
                "pulled": pulled,
                "pushed": pushed,
                "error": error,
            }

        return list(await asyncio.gather(*(one(m) for m in candidates(self._members.values(), self.self_id))))

    # --- pulling and pushing -----------------------------------------------------------------------------------

    async def _pull(self, session_id: str, member: Member) -> int:
        """Apply every page the peer holds past this server's vector; returns how many changes were new here."""
        remote = await self._remote(member)
        vector = (await self.engine.position(session_id)).vector
        applied = 0
        while True:
            answer = await remote.post(
                "/sync/request",
                {
                    "session_id": session_id,
                    "graph_name": DEFAULT_GRAPH,
                    "requesting_instance": self.self_id,
                    "vector_clock": vector_wire(vector),
                    "limit": self.settings.page_size,
                },
            )
            body = answer.get("payload")
            if not isinstance(body, dict):
                raise PeerSyncError("refused", f"answered without a payload: {answer.get('message')}")
            try:
                payload = SyncPayload.from_wire(body, DEFAULT_GRAPH)
            except SpecaiError as exc:
                raise local_refusal(exc) from None
            except (KeyError, TypeError, ValueError) as exc:
                raise PeerSyncError("refused", f"sent a malformed payload: {exc}") from None
            if payload.session_id != session_id:
                raise PeerSyncError("refused", f"answered with session '{payload.session_id}' instead")
            try:
                stats = await self.engine.apply(payload, sender=member.instance_id)
            except SpecaiError as exc:
                raise local_refusal(exc) from None
            applied += stats.nodes_applied + stats.edges_applied + stats.tombstones_applied
            if not payload.more:
                return applied
            if stats.vector == vector:
                raise PeerSyncError(
                    "refused", "offered more changes, but none that moved this server's vector"
                )
            vector = stats.vector

    async def _push(self, session_id: str, member: Member) -> int:
        """Send the peer what this server holds past what it last reported; returns how many changes went."""
        status = await self.engine.position(session_id)
        if not status.config.sync_enabled:
            return 0
        theirs = self._believed(session_id, member.instance_id, status)
        if not _ahead(status.vector, theirs):
            return 0
        remote = await self._remote(member)
        limit, sent = self.settings.page_size, 0
        while True:
            payload = await self.engine.request(session_id, None, theirs, limit)
            if not payload.changes:
                return sent
            try:
                answer = await remote.post(
                    "/sync/apply", {**payload.wire(), "sending_instance": self.self_id}
                )
            except PeerSyncError as exc:
                if exc.http_status == 413 and limit > 1:  # more than its body limit: halve the page
                    limit = max(1, limit // 2)
                    continue
                raise
            sent += len(payload.changes)
            try:
                reported = parse_vector(answer.get("vector_clock"))
            except SpecaiError:
                reported = {**theirs, **payload.through}
            if reported == theirs:
                raise PeerSyncError("refused", "applied a page, but the vector it reports did not move")
            theirs = self._theirs[(session_id, member.instance_id)] = reported
            if not payload.more:
                return sent

    def _believed(self, session_id: str, peer: str, status: SyncPosition) -> Vector:
        """What the peer holds as far as this server knows: its last report or pull here, or a push answer."""
        theirs: Vector = {}
        for record in status.peers:
            if record.instance_id == peer:
                theirs = dict(record.their_vector)
        for origin, seq in self._theirs.get((session_id, peer), {}).items():
            theirs[origin] = max(theirs.get(origin, 0), seq)
        return theirs

    async def _pull_task(self, session_id: str, member: Member) -> None:
        entry = self._entry(session_id, member)
        try:
            async with self._gate:
                await self._pull(session_id, member)
        except PeerSyncError as exc:
            self._failed(entry, exc)
        except Exception:
            log.exception("pulling session %r from %s failed here", session_id, member.instance_id)
        else:
            self._ok(entry)
            self._wake(session_id, member.instance_id)  # it may lack what this server holds

    async def _push_task(self, session_id: str, peer: str) -> None:
        while (session_id, peer) in self._dirty:
            self._dirty.discard((session_id, peer))
            member = self._members.get(peer)
            if member is None or not (member.live and reachable(member)):
                return
            entry = self._entry(session_id, member)
            if entry.failures:  # backing off: the next pull that works wakes the push again
                return
            try:
                async with self._gate:
                    sent = await self._push(session_id, member)
            except PeerSyncError as exc:
                self._failed(entry, exc)
                return
            except Exception:
                log.exception("pushing session %r to %s failed here", session_id, peer)
                return
            if sent:
                self._ok(entry)

    def _wake(self, session_id: str, peer: str) -> None:
        """Push to `peer` soon (once more if a push to it is under way)."""
        self._dirty.add((session_id, peer))
        member = self._members.get(peer)
        if member is not None:
            self._spawn("push", session_id, member, functools.partial(self._push_task, session_id, peer))

    def _watch(self, sessions: Sequence[str]) -> None:
        """One commit watcher per synced session (stopped when sync is turned off)."""
        for session_id in sessions:
            task = self._watchers.get(session_id)
            if task is None or task.done():
                self._watchers[session_id] = asyncio.create_task(
                    self._watcher(session_id), name=f"specai-sync-watch-{session_id}"
                )
        for session_id in [s for s in self._watchers if s not in sessions]:
            self._watchers.pop(session_id).cancel()

    async def _watcher(self, session_id: str) -> None:
        """After each commit to the session (a local write, or an apply), push to every peer that lacks it."""
        event = self.notifier.event(session_id)
        while True:
            await event.wait()
            await asyncio.sleep(PUSH_DELAY)
            event = self.notifier.event(session_id)  # commits from here on wake the next round
            for member in candidates(self._members.values(), self.self_id):
                self._wake(session_id, member.instance_id)

    # --- bookkeeping ------------------------------------------------------------------------------------------

    def _spawn(
        self, kind: str, session_id: str, member: Member, start: Callable[[], Awaitable[None]]
    ) -> None:
        key = (kind, session_id, member.instance_id)
        running = self._tasks.get(key)
        if running is not None and not running.done():
            return

        async def body() -> None:
            try:
                await start()
            finally:
                if self._tasks.get(key) is task:
                    del self._tasks[key]

        task = asyncio.create_task(body(), name=f"specai-sync-{kind}-{member.instance_id}")
        self._tasks[key] = task

    async def _refresh(self) -> None:
        """Read the mesh; connections to members that left, or moved, are closed."""
        view = await self.registry.view()
        self._members = {m.instance_id: m for m in view.members if m.instance_id != self.self_id}
        for peer in [p for p in self._remotes if p not in self._members]:
            _, remote = self._remotes.pop(peer)
            with contextlib.suppress(Exception):
                await remote.aclose()

    async def _remote(self, member: Member) -> Remote:
        target = (member.base_url, member.fingerprint)
        cached = self._remotes.get(member.instance_id)
        if cached is not None and cached[0] == target:
            return cached[1]
        if cached is not None:
            with contextlib.suppress(Exception):
                await cached[1].aclose()
            del self._remotes[member.instance_id]
        remote = self.connect(member)
        if remote is None:
            raise PeerSyncError(
                "pending", "it cannot be called yet (this server has not joined its registry)"
            )
        self._remotes[member.instance_id] = (target, remote)
        return remote

    def _entry(self, session_id: str, member: Member) -> PeerSync:
        entry = self._entries.get((session_id, member.instance_id))
        if entry is None:
            entry = self._entries[(session_id, member.instance_id)] = PeerSync(
                member.instance_id, member.base_url
            )
        entry.base_url = member.base_url
        return entry

    def _ok(self, entry: PeerSync) -> None:
        if entry.state not in ("ok", "pending"):
            log.warning("graph sync with %s works again", entry.base_url)
        entry.state, entry.last_error, entry.failures = "ok", None, 0
        entry.last_ok_at, entry.next_try_at = self.clock(), None

    def _failed(self, entry: PeerSync, exc: PeerSyncError) -> None:
        if exc.state == "pending":  # not a failure of the peer: no backoff
            entry.state, entry.last_error = "pending", exc.message
            return
        entry.failures += 1
        delay = backoff(entry.failures, self.interval, self.settings.retry_interval_secs)
        entry.next_try_at = self.clock() + delay
        if exc.state != entry.state:
            log.warning(
                "graph sync with %s (%s): %s: %s; retrying with backoff (now %g s)",
                entry.base_url,
                entry.instance_id,
                exc.state,
                exc.message,
                delay,
            )
        entry.state, entry.last_error = exc.state, exc.message
