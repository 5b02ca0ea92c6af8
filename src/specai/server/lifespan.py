"""What runs beside the requests, started and stopped here only, in one stated order.

Start: (1) the store: the one `create_app` was given, or opened (and migrated) from `[database]`; on PostgreSQL
also this process's LISTEN connection (`state.listener`: graph commits of other processes wake our change feeds,
ours wake theirs; released leases wake our claim) and the change-counter watcher (`state.versions`: reloads caches
other processes invalidated); (2) the services bound to it: API keys, revoked token ids (loaded), sessions, graph,
mesh registry (this server registered, which fixes its rank as leader) and message queue; (3) background work:
the singleton-jobs lease (`state.leadership`; on PostgreSQL over a connection of its own) is claimed once before
serving, so a lone server leads when it first answers, then renewed or claimed every `leader_lease_secs / 3`;
while this process holds it, it runs the singleton jobs: retention pruning, eviction of silent mesh members, and
with `[sync] enabled` the graph sync coordinator (`state.sync_link`, added once the server answers: it calls peers
through the mesh link; None without `[sync] enabled`). Once the server answers (`serving`, called by the runner)
the mesh link starts in every process (a member registers only once it can be reached; every process must accept
peer tokens). Stop in reverse: the singleton jobs and the lease first (released, so another process takes over at
once; this begins as soon as `stopping` is set), the mesh link (given `LEAVE_SECS` to deregister from its peers),
the other background tasks and the LISTEN connection, the services (provider connections closed), the lease's
connection, then the store, closed only when it was opened here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable

from specai.errors import SpecaiError
from specai.server.leader import Leadership
from specai.server.mesh_link import EVICT_AFTER_TIMEOUTS, Credentials, MeshLink, mesh_credentials
from specai.server.state import ServerState
from specai.server.sync_link import SyncLink, http_remotes
from specai.store import Store
from specai.store.lease import LEASE_CHANNEL, Lease, LostLeadershipError, Term, holder_id, open_lease_store
from specai.store.listener import Listener
from specai.store.urls import is_postgres
from specai.store.versions import VERSION_CHANNEL, VersionWatcher

PRUNE_EVERY_SECS = 3600
LEAVE_SECS = 2.0
JOBS_LEASE = "singleton-jobs"  # the one lease all singleton jobs run under
log = logging.getLogger("specai.server")


class Lifespan:
    """The start-up and shutdown of one app's background work; `fatal` is set when it must stop the server."""

    def __init__(self, state: ServerState, store: Store | None = None) -> None:
        self.state = state
        self.fatal: SpecaiError | None = None  # a refused join: the runner raises it once serving ends
        self._given = store
        self._opened: Store | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._link: asyncio.Task[None] | None = None
        self._leading: asyncio.Task[None] | None = None
        self._lease_store: Store | None = None  # PostgreSQL: the lease's own connection
        self._sync: SyncLink | None = None

    async def startup(self) -> None:
        """Store, then services, then background tasks (Litestar's `on_startup`); a failure part-way undoes what
        was started (Litestar runs no `on_shutdown` after a failed start-up), so no connection is left open."""
        try:
            await self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.shutdown()
            raise

    async def _start(self) -> None:
        store = self._given
        if store is None:
            store = self._opened = await Store.open(self.state.settings)
        shared = is_postgres(store.engine.url)
        if shared:
            self.state.listener = Listener(store.engine.url)
            self.state.versions = VersionWatcher(store)
            self.state.listener.subscribe(VERSION_CHANNEL, self.state.versions.wake)
            self.state.notifier.relay(self.state.listener)
        services = self.state.attach(store)
        await self.state.load_caches(services)
        await services.mesh.register(self.state.self_info())  # keeps its first registration time
        leadership = self.state.leadership = await self._leadership(store)
        if self.state.listener is not None:
            self.state.listener.subscribe(LEASE_CHANNEL, leadership.wake)
        if self.state.versions is not None and self.state.listener is not None:
            await self.state.versions.prime()
            await self.state.listener.start()
            self._tasks.append(asyncio.create_task(self.state.versions.run(), name="specai-versions"))
        leadership.add("retention pruning", self._prune)
        leadership.add("mesh member eviction", self._evict)
        pause = await leadership.attempt()
        self._leading = asyncio.create_task(self._lead(leadership, pause), name="specai-leadership")

    async def _leadership(self, store: Store) -> Leadership:
        """The singleton-jobs lease of this process; on PostgreSQL its statements get a connection of their own."""
        ttl = self.state.settings.database.leader_lease_secs
        lease_store = store
        if is_postgres(store.engine.url):
            lease_store = self._lease_store = await open_lease_store(store.engine.url, ttl / 3)
        return Leadership(Lease(lease_store, JOBS_LEASE, holder_id(self.state.instance_id), ttl))

    def serving(self, announce: Callable[[str], None], request_stop: Callable[[], None]) -> None:
        """The server answers: keep its mesh entry fresh, and join the mesh now if asked to.

        `announce` tells the operator something; `request_stop` begins a graceful shutdown (a refused join).
        """
        state, join = self.state, self.state.settings.join
        link = MeshLink(
            state.settings,
            state.mesh(),
            state.self_info(),
            join.url if join else None,
            join.fingerprint if join else None,
            mesh_credentials(state.settings) if join else Credentials(),
            announce,
            state.trust_registry,
            state.issue_peer_token,
        )
        self._link = asyncio.create_task(self._run_link(link, request_stop), name="specai-mesh-link")
        self._tasks.append(self._link)
        if state.settings.sync.enabled and state.leadership is not None:
            sync = SyncLink(
                state.settings.sync,
                state.sync(),
                state.mesh(),
                state.graph().notifier,
                http_remotes(link.peer_for),
            )
            state.sync_link = self._sync = sync  # every process answers /sync/now with it; the leader cycles
            state.leadership.add("graph sync coordinator", lambda _term: self._run_sync(sync))

    async def shutdown(self) -> None:
        """Background tasks, then services, then the store (Litestar's `on_shutdown`)."""
        if self._leading is not None:  # it stops the jobs and releases the lease once `stopping` is set
            if self.state.stopping.is_set():
                await asyncio.wait({self._leading}, timeout=LEAVE_SECS)
            self._leading.cancel()  # no `stopping` (an embedder): it stops the jobs and releases all the same
            with contextlib.suppress(asyncio.CancelledError):
                await self._leading
            self._leading = None
        if self._sync is not None:  # its connections (a process that did not lead used them too)
            await self._sync.close()
            self._sync = None
        self.state.sync_link = None
        if self._link is not None:  # it deregisters from its peers once `stopping` is set
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._link), LEAVE_SECS)
        for task in reversed(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.state.listener is not None:
            await self.state.listener.close()
            self.state.notifier.relay(None)
            self.state.listener = self.state.versions = None
        await self.state.runtime.aclose()
        self.state.detach()
        self.state.leadership = None
        if self._lease_store is not None:
            await self._lease_store.close()
            self._lease_store = None
        if self._opened is not None:
            await self._opened.close()
            self._opened = None

    async def _run_link(self, link: MeshLink, request_stop: Callable[[], None]) -> None:
        try:
            await link.run(self.state.stopping)
        except SpecaiError as exc:
            self.fatal = exc
            request_stop()
        except Exception:
            log.exception("the mesh link failed; this server no longer heartbeats its peers")

    async def _lead(self, leadership: Leadership, pause: float) -> None:
        """Run the leadership loop after the first claim's pause; the jobs that claim started are stopped (and
        awaited, so none holds a connection when the store closes) even when cancelled during that pause."""
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self.state.stopping.wait()
            await leadership.run(self.state.stopping)
        finally:
            await leadership.resign()  # a no-op once `run` resigned

    async def _run_sync(self, sync: SyncLink) -> None:
        """A singleton job: the coordinator's cycles, while this process leads (it closes when cancelled)."""
        try:
            await sync.run(self.state.stopping)
        except Exception:
            log.exception("the graph sync coordinator failed; synced sessions are no longer pulled or pushed")

    async def _prune(self, term: Term) -> None:
        """A singleton job: apply the retention settings now and every hour, each deletion fenced by the lease; a
        failure is logged and retried later."""
        settings = self.state.settings
        keep_changes = dt.timedelta(days=settings.graph.changelog_retention_days)
        keep_messages = dt.timedelta(seconds=settings.mesh.message_retention_secs)
        while True:
            try:
                if keep_changes and (pruned := await self.state.graph().prune(keep_changes, term.fence)):
                    log.info("pruned %d graph changelog rows older than %s", pruned, keep_changes)
                if pruned := await self.state.messages().prune(keep_messages, term.fence):
                    log.info("pruned %d mesh messages older than %s", pruned, keep_messages)
                if pruned := await self.state.login_throttle.prune() + await self.state.hash_limit.prune():
                    log.info("pruned %d idle login-throttle and rate-limit rows", pruned)
            except LostLeadershipError:
                raise
            except Exception:
                log.exception(
                    "pruning old graph changes, mesh messages or throttle rows failed; retrying in an hour"
                )
            await asyncio.sleep(PRUNE_EVERY_SECS)

    async def _evict(self, term: Term) -> None:
        """A singleton job: every heartbeat interval, remove the mesh members silent for `EVICT_AFTER_TIMEOUTS`
        leader timeouts (fenced by the lease); not before this process has run that long itself, so members
        that could not reach it before it started get to heartbeat first. Evicted members register again."""
        mesh = self.state.settings.mesh
        silent = mesh.leader_timeout_secs * EVICT_AFTER_TIMEOUTS
        failing = False
        while True:
            await asyncio.sleep(mesh.heartbeat_interval_secs)
            if time.monotonic() - self.state.started <= silent:
                continue
            try:
                if gone := await self.state.mesh().evict(dt.timedelta(seconds=silent), term.fence):
                    log.info("evicted mesh members silent for %g s: %s", silent, ", ".join(gone))
            except LostLeadershipError:
                raise
            except Exception:
                if not failing:
                    log.exception("evicting silent mesh members failed; retrying every heartbeat interval")
                failing = True
            else:
                failing = False
