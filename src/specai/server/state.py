"""Per-server state shared by the routes: settings, agents, users, throttles and the shutdown signal."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from specai.agents.runtime import AgentRuntime
from specai.agents.sessions import SessionStore
from specai.config import Settings
from specai.errors import SpecaiError, TokenError
from specai.graph.store import GraphStore
from specai.identity.tls import CertInfo, ensure_server_cert
from specai.mesh.peer_token import PeerTokenVerifier, load_signing_key, peer_principal
from specai.mesh.peer_token import issue as issue_peer_token
from specai.mesh.queue import MessageQueue
from specai.mesh.registry import MemberInfo, MeshRegistry, load_instance_id
from specai.server.mesh_link import Credentials, MeshLink, mesh_credentials
from specai.store import Store
from specai.users.access import Principal
from specai.users.directory import UserDirectory
from specai.users.keys import ApiKeyStore, StoredRevocations
from specai.users.throttle import (
    LoginThrottle,
    MemoryLoginThrottle,
    MemoryRateLimiter,
    RateLimiter,
    VerifyGate,
)

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
    login_throttle: LoginThrottle
    password_gate: VerifyGate  # bounds running and queued password checks (logins and /auth/hash)
    hash_limit: RateLimiter
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.monotonic)
    store: Store | None = None
    instance_id: str = ""
    join_url: str | None = None
    join_fingerprint: str | None = None
    fatal: SpecaiError | None = None  # set when background work must stop the server (a refused join)
    request_stop: Callable[[], None] | None = None  # set by the runner: begins a graceful shutdown
    announce: Callable[[str], None] = (
        print  # how background work tells the operator something (set by the CLI)
    )
    _graph: GraphStore | None = None
    _keys: ApiKeyStore | None = None
    _revocations: StoredRevocations | None = None
    _mesh: MeshRegistry | None = None
    _messages: MessageQueue | None = None
    _pruner: asyncio.Task[None] | None = None
    _link: asyncio.Task[None] | None = None
    _peer_tokens: PeerTokenVerifier | None = None  # set once joined: checks tokens the registry signed
    _signing_key: Any = None  # this server's TLS key, loaded when it first issues a peer token

    def mesh(self) -> MeshRegistry:
        """The mesh registry (open between start-up and shutdown)."""
        if self._mesh is None:
            raise RuntimeError("the store is not open yet")
        return self._mesh

    def issue_peer_token(self, source: str, audience: str) -> tuple[str, int]:
        """Sign a peer token (with this server's TLS key) letting member `source` call member `audience`."""
        if self._signing_key is None:
            self._signing_key = load_signing_key(ensure_server_cert(self.settings).key, self.cert.pem)
        return issue_peer_token(self._signing_key, self.instance_id, source, audience)

    def trust_registry(self, registry_cert_der: bytes, registry_id: str) -> None:
        """Accept peer tokens signed by the registry this server joined (its pinned certificate)."""
        self._peer_tokens = PeerTokenVerifier(registry_cert_der, registry_id, self.instance_id)

    def peer(self, token: str) -> Principal:
        """The principal of a peer token: the member it names, for mesh routes only; TokenError if invalid."""
        if self._peer_tokens is None:
            raise TokenError("this server accepts no peer tokens (it joined no registry)")
        return peer_principal(self._peer_tokens.verify(token).sub)

    def messages(self) -> MessageQueue:
        """The mesh message queue (open between start-up and shutdown)."""
        if self._messages is None:
            raise RuntimeError("the store is not open yet")
        return self._messages

    def self_info(self) -> MemberInfo:
        """How this server describes itself to the mesh."""
        server, mesh = self.settings.server, self.settings.mesh
        host = server.host if server.host not in ("0.0.0.0", "::", "") else socket.gethostname()
        shown = f"[{host}]" if ":" in host else host
        capabilities = ["query"] if self.join_url else ["registry", "query"]
        return MemberInfo(
            instance_id=self.instance_id,
            hostname=host,
            port=server.port,
            capabilities=capabilities,
            agent_profiles=sorted(self.runtime.agents),
            base_url=mesh.advertise_url or f"https://{shown}:{server.port}",
            fingerprint=self.cert.fingerprint,
        )

    def keys(self) -> ApiKeyStore:
        """The API keys (open between start-up and shutdown)."""
        if self._keys is None:
            raise RuntimeError("the store is not open yet")
        return self._keys

    def revocations(self) -> StoredRevocations:
        """Revoked token ids (open between start-up and shutdown)."""
        if self._revocations is None:
            raise RuntimeError("the store is not open yet")
        return self._revocations

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
        """Open the database (migrating it), give the agents their sessions and graph, register in the mesh."""
        self.store = await Store.open(self.settings)
        self._keys = ApiKeyStore(self.store)
        self._revocations = StoredRevocations(self.store)
        await self._revocations.load()
        self.runtime.sessions = SessionStore(self.store)
        quota = self.settings.graph.max_nodes_per_account
        self._graph = GraphStore(self.store, max_nodes_per_account=quota)
        self.runtime.graph = self._graph
        mesh = self.settings.mesh
        self._mesh = MeshRegistry(
            self.store, self.instance_id, mesh.leader_timeout_secs, mesh.max_members_per_account
        )
        self._messages = MessageQueue(
            self.store, mesh.max_payload_bytes, mesh.max_queued_messages, mesh.max_inbox_bytes
        )
        await self._mesh.register(self.self_info())  # keeps its first registration time: its rank as leader
        self._pruner = asyncio.create_task(self._prune())

    async def _prune(self) -> None:
        """Apply the retention settings now and every hour; a failure is logged and retried later."""
        keep_changes = dt.timedelta(days=self.settings.graph.changelog_retention_days)
        keep_messages = dt.timedelta(seconds=self.settings.mesh.message_retention_secs)
        while True:
            try:
                if keep_changes and (pruned := await self.graph().prune(keep_changes)):
                    log.info("pruned %d graph changelog rows older than %s", pruned, keep_changes)
                if pruned := await self.messages().prune(keep_messages):
                    log.info("pruned %d mesh messages older than %s", pruned, keep_messages)
            except Exception:
                log.exception("pruning old graph changes or mesh messages failed; retrying in an hour")
            await asyncio.sleep(_PRUNE_EVERY_SECS)

    def serving(self) -> None:
        """The server answers: keep its mesh entry fresh, and join the mesh now if asked to (a member registers
        only once it can be reached)."""
        link = MeshLink(
            self.settings,
            self.mesh(),
            self.self_info(),
            self.join_url,
            self.join_fingerprint,
            mesh_credentials(self.settings) if self.join_url else Credentials(),
            self.announce,
            self.trust_registry,
        )
        self._link = asyncio.create_task(self._run_link(link))

    async def _run_link(self, link: MeshLink) -> None:
        try:
            await link.run(self.stopping)
        except SpecaiError as exc:
            self.fatal = exc
            if self.request_stop is not None:
                self.request_stop()
        except Exception:
            log.exception("the mesh link failed; this server no longer heartbeats its peers")

    async def stop(self) -> None:
        """Stop background work, close provider connections and the database."""
        if self._link is not None:  # it deregisters from its peers once `stopping` is set
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._link), 2)
        for task in (self._pruner, self._link):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
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
            instance_id=load_instance_id(settings.home),
            settings=settings,
            runtime=AgentRuntime(settings),
            cert=cert,
            token_secret=token_secret,
            users=users,
            login_throttle=MemoryLoginThrottle(
                pair_limit=auth.max_failed_logins,
                address_limit=auth.max_failed_logins_per_address,
                user_limit=auth.max_failed_logins_per_user,
                lockout=auth.lockout_secs,
            ),
            password_gate=VerifyGate(os.cpu_count() or 1, auth.max_waiting_logins),
            hash_limit=MemoryRateLimiter(auth.hash_per_minute),
        )
