"""Per-server state shared by the routes: settings, agents, users, throttles and the shutdown signal."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field

from specai.agents import AgentRuntime
from specai.config import Settings
from specai.sessions import SessionStore
from specai.store import Store
from specai.throttle import LoginThrottle
from specai.tls import CertInfo
from specai.users import UserDirectory

_ADDRESS_LIMIT = 10


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

    def sessions(self) -> SessionStore:
        """The session store (open between start-up and shutdown)."""
        if self.runtime.sessions is None:
            raise RuntimeError("the store is not open yet")
        return self.runtime.sessions

    async def start(self) -> None:
        """Open the database (migrating it) and give the agents their session store."""
        self.store = await Store.open(self.settings)
        self.runtime.sessions = SessionStore(self.store)

    async def stop(self) -> None:
        """Close provider connections and the database."""
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
