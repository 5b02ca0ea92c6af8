"""What runs beside the requests, started and stopped here only, in one stated order.

Start: (1) the store: the one `create_app` was given, or opened (and migrated) from `[database]`; on PostgreSQL
also this process's LISTEN connection (`state.listener`: graph commits of other processes wake our change feeds,
ours wake theirs) and the change-counter watcher (`state.versions`: reloads caches other processes invalidated);
(2) the services bound to it: API keys, revoked token ids (loaded), sessions, graph, mesh registry (this server
registered, which fixes its rank as leader) and message queue; (3) background tasks: the retention pruner at once, the mesh link once
the server answers (`serving`, called by the runner: a member registers only once it can be reached), and with
`[sync] enabled` the graph sync coordinator right after it (`state.sync_link`; None otherwise). Listeners and
leases join step 3. Stop in reverse: background tasks (the sync coordinator first; the mesh link gets `LEAVE_SECS`
to deregister from its peers once `stopping` is set), the services (provider connections closed), then the store,
closed only when it was opened here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable

from specai.errors import SpecaiError
from specai.server.mesh_link import Credentials, MeshLink, mesh_credentials
from specai.server.state import ServerState
from specai.server.sync_link import SyncLink, http_remotes
from specai.store import Store
from specai.store.listener import Listener
from specai.store.urls import is_postgres
from specai.store.versions import VERSION_CHANNEL, VersionWatcher

PRUNE_EVERY_SECS = 3600
LEAVE_SECS = 2.0
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

    async def startup(self) -> None:
        """Store, then services, then background tasks (Litestar's `on_startup`)."""
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
        if self.state.versions is not None and self.state.listener is not None:
            await self.state.versions.prime()
            await self.state.listener.start()
            self._tasks.append(asyncio.create_task(self.state.versions.run(), name="specai-versions"))
        self._tasks.append(asyncio.create_task(self._prune(), name="specai-pruner"))

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
        if state.settings.sync.enabled:
            sync = SyncLink(
                state.settings.sync,
                state.sync(),
                state.mesh(),
                state.graph().notifier,
                http_remotes(link.peer_for),
            )
            state.sync_link = sync
            self._tasks.append(asyncio.create_task(self._run_sync(sync), name="specai-sync-link"))

    async def shutdown(self) -> None:
        """Background tasks, then services, then the store (Litestar's `on_shutdown`)."""
        if self._link is not None:  # it deregisters from its peers once `stopping` is set
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._link), LEAVE_SECS)
        for task in reversed(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.state.sync_link = None
        if self.state.listener is not None:
            await self.state.listener.close()
            self.state.notifier.relay(None)
            self.state.listener = self.state.versions = None
        await self.state.runtime.aclose()
        self.state.detach()
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

    async def _run_sync(self, sync: SyncLink) -> None:
        try:
            await sync.run(self.state.stopping)
        except Exception:
            log.exception("the graph sync coordinator failed; synced sessions are no longer pulled or pushed")

    async def _prune(self) -> None:
        """Apply the retention settings now and every hour; a failure is logged and retried later."""
        settings = self.state.settings
        keep_changes = dt.timedelta(days=settings.graph.changelog_retention_days)
        keep_messages = dt.timedelta(seconds=settings.mesh.message_retention_secs)
        while True:
            try:
                if keep_changes and (pruned := await self.state.graph().prune(keep_changes)):
                    log.info("pruned %d graph changelog rows older than %s", pruned, keep_changes)
                if pruned := await self.state.messages().prune(keep_messages):
                    log.info("pruned %d mesh messages older than %s", pruned, keep_messages)
            except Exception:
                log.exception("pruning old graph changes or mesh messages failed; retrying in an hour")
            await asyncio.sleep(PRUNE_EVERY_SECS)
