"""Per-server state shared by the routes: settings, agents, users, throttles and the shutdown signal."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import time
from dataclasses import dataclass, field

from specai.agents import AgentRuntime
from specai.config import Settings
from specai.graph import GraphStore
from specai.sessions import SessionStore
from specai.store import Store
from specai.throttle import LoginThrottle
from specai.tls import CertInfo
from specai.users import UserDirectory

_ADDRESS_LIMIT = 10
_PRUNE_EVERY_SECS = 3600
log = logging.getLogger("specai.server")


@dataclass
class ServerState:
    """Everything a request handler may need, built once by `create_app`."""

    settings: Settings
    runtime: AgentRuntime
    cert: CertInfo
    token_secret: str
    users: UserDirectory | None
    user_throttle: LoginThrottle
    address_throttle: LoginThrottle
    password_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(os.cpu_count() or 1))
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.monotonic)
    store: Store | None = None
    _graph: GraphStore | None = None
    _pruner: asyncio.Task[None] | None = None

    def graph(self) -> GraphStore:
        """The knowledge graph (open between start-up and shutdown)."""
        if self._graph is None:
            raise RuntimeError("the store is not open yet")
        return self._graph

    def sessions(self) -> SessionStore:
        """The session store (open between start-up and shutdown)."""
        if self.runtime.sessions is None:
            raise RuntimeError("the store is not open yet")
        return self.runtime.sessions

    async def start(self) -> None:
        """Open the database (migrating it) and give the agents their session store."""
        self.store = await Store.open(self.settings)
        self.runtime.sessions = SessionStore(self.store)
        self._graph = GraphStore(self.store)
        self.runtime.graph = self._graph
        if self.settings.graph.changelog_retention_days:
            self._pruner = asyncio.create_task(self._prune_changelog(self._graph))

    async def _prune_changelog(self, graph: GraphStore) -> None:
        """Apply `[graph] changelog_retention_days` now and every hour; a failure is logged and retried later."""
        keep = dt.timedelta(days=self.settings.graph.changelog_retention_days)
        while True:
            try:
                if pruned := await graph.prune(keep):
                    log.info("pruned %d graph changelog rows older than %s", pruned, keep)
            except Exception:
                log.exception("pruning the graph changelog failed; retrying in an hour")
            await asyncio.sleep(_PRUNE_EVERY_SECS)

    async def stop(self) -> None:
        """Stop background work, close provider connections and the database."""
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
        await self.runtime.aclose()
        if self.store is not None:
            await self.store.close()

    @classmethod
    def build(
        cls, settings: Settings, cert: CertInfo, token_secret: str, users: UserDirectory | None
    ) -> ServerState:
        """Assemble state from settings; the login throttles follow `[auth]`."""
        auth = settings.auth
        return cls(
            settings=settings,
            runtime=AgentRuntime(settings),
            cert=cert,
            token_secret=token_secret,
            users=users,
            user_throttle=LoginThrottle(auth.max_failed_logins, auth.lockout_secs),
            address_throttle=LoginThrottle(_ADDRESS_LIMIT, auth.lockout_secs),
        )
