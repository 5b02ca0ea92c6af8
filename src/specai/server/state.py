"""Per-server state shared by the routes: settings, agents, users, throttles, the shutdown signal and the services."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from specai.agents.runtime import AgentRuntime
from specai.agents.sessions import SessionStore
from specai.config import Settings
from specai.errors import TokenError
from specai.graph.feed import ChangeNotifier, Notifier
from specai.graph.store import GraphStore
from specai.graph.sync.engine import SyncEngine
from specai.graph.sync.hlc import HybridClock
from specai.graph.sync.recorder import SyncRecorder
from specai.identity.tls import CertInfo, ensure_server_cert
from specai.mesh.peer_token import PeerTokenVerifier, load_signing_key, peer_principal
from specai.mesh.peer_token import issue as issue_peer_token
from specai.mesh.queue import MessageQueue
from specai.mesh.registry import MemberInfo, MeshRegistry
from specai.store import Store
from specai.store.listener import Listener
from specai.store.versions import VersionWatcher
from specai.users.access import LOCAL, Principal
from specai.users.directory import Directory
from specai.users.keys import KEYS, REVOCATIONS, ApiKeyStore, StoredRevocations
from specai.users.table import USERS, DatabaseDirectory
from specai.users.throttle import LoginThrottle, RateLimiter, VerifyGate

if TYPE_CHECKING:
    from specai.server.leader import Leadership
    from specai.server.security import TokenVerifier
    from specai.server.sync_link import SyncLink


@dataclass(frozen=True)
class Services:
    """What lives in the database, bound to one open store (by the lifespan, between start-up and shutdown)."""

    store: Store
    keys: ApiKeyStore
    revocations: StoredRevocations
    sessions: SessionStore
    graph: GraphStore
    mesh: MeshRegistry
    messages: MessageQueue
    sync: SyncEngine

    @classmethod
    def bind(
        cls,
        store: Store,
        settings: Settings,
        instance_id: str,
        notifier: Notifier,
        users: Directory | None = None,
    ) -> Services:
        """Every store-backed service of this server, on `store`."""
        mesh, quota = settings.mesh, settings.graph.max_nodes_per_account
        clock = HybridClock(instance_id, int(settings.sync.max_clock_skew_secs * 1000))
        graph = GraphStore(store, notifier, max_nodes_per_account=quota, recorder=SyncRecorder(clock))
        return cls(
            store=store,
            keys=ApiKeyStore(store),
            revocations=StoredRevocations(store),
            sessions=SessionStore(store),
            graph=graph,
            mesh=MeshRegistry(store, instance_id, mesh.leader_timeout_secs, mesh.max_members_per_account),
            messages=MessageQueue(
                store, mesh.max_payload_bytes, mesh.max_queued_messages, mesh.max_inbox_bytes
            ),
            sync=SyncEngine(graph, clock, *_owner_names(users)),
        )


def _owner_names(users: Directory | None) -> tuple[Callable[[str], str | None], Callable[[str], str | None]]:
    """How a synced session's owner id here maps to the user name all members share, and back."""
    if users is None:  # auth disabled: everything belongs to the one local user
        return (lambda owner_id: LOCAL.name), (lambda name: LOCAL.user_id)

    def name_of(owner_id: str) -> str | None:
        user = users.by_id(owner_id)
        return None if user is None else user.username

    def id_of(name: str) -> str | None:
        user = users.get(name)
        return None if user is None else user.id

    return name_of, id_of


@dataclass
class ServerState:
    """Everything a request handler may need, complete when `create_app` builds it (backends chosen there)."""

    settings: Settings
    runtime: AgentRuntime
    cert: CertInfo
    token_secret: str
    instance_id: str
    users: Directory | None
    login_throttle: LoginThrottle
    password_gate: VerifyGate  # bounds running and queued password checks (logins and /auth/hash)
    hash_limit: RateLimiter
    notifier: ChangeNotifier  # wakes change-stream readers when a graph write commits (here, and relayed)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    started: float = field(default_factory=time.monotonic)
    _services: Services | None = None
    sync_link: SyncLink | None = None  # the graph sync coordinator ([sync] enabled), while the server runs
    leadership: Leadership | None = None  # runs the singleton jobs while this process holds their lease
    listener: Listener | None = None  # PostgreSQL: this process's LISTEN connection, while the store is open
    versions: VersionWatcher | None = (
        None  # PostgreSQL: reloads caches when another process changed their source
    )
    verifier: TokenVerifier | None = None  # checks bearer tokens (auth on); set by `create_app`
    _peer_tokens: PeerTokenVerifier | None = None  # set once joined: checks tokens the registry signed
    _signing_key: Any = None  # this server's TLS key, loaded when it first issues a peer token

    @property
    def join_url(self) -> str | None:
        """The mesh registry this server joins once serving (`--join`), or None for a registry."""
        return self.settings.join.url if self.settings.join else None

    def attach(self, store: Store) -> Services:
        """Bind the services to the open store and hand the agents their sessions and graph (lifespan step 2)."""
        services = Services.bind(store, self.settings, self.instance_id, self.notifier, self.users)
        self._services = services
        self.runtime.sessions = services.sessions
        self.runtime.graph = services.graph
        return services

    async def load_caches(self, services: Services) -> None:
        """Fill the in-memory caches of what the database holds (at start, after `attach`); on PostgreSQL, reload
        each when another process changes what it mirrors: users, revoked token ids, revoked API keys."""
        await services.revocations.load()
        users = self.users if isinstance(self.users, DatabaseDirectory) else None
        if users is not None:
            await users.open(services.store)  # no users at all: a CredentialsError refuses the start
        if (versions := self.versions) is not None:
            versions.on_change(REVOCATIONS, services.revocations.reload)
            if self.verifier is not None:
                versions.on_change(KEYS, self.verifier.forget_keys)
            if users is not None:
                versions.on_change(USERS, users.reload)

    def detach(self) -> None:
        """Forget the services (at shutdown, before the store closes)."""
        self._services = None

    def services(self) -> Services:
        """The store-backed services (open between start-up and shutdown)."""
        if self._services is None:
            raise RuntimeError("the store is not open yet")
        return self._services

    @property
    def store(self) -> Store | None:
        """The open store, or None outside start-up and shutdown."""
        return self._services.store if self._services is not None else None

    def mesh(self) -> MeshRegistry:
        """The mesh registry (open between start-up and shutdown)."""
        if (services := self._services) is None:
            raise RuntimeError("the store is not open yet")
        return services.mesh

    def messages(self) -> MessageQueue:
        """The mesh message queue (open between start-up and shutdown)."""
        if (services := self._services) is None:
            raise RuntimeError("the store is not open yet")
        return services.messages

    def keys(self) -> ApiKeyStore:
        """The API keys (open between start-up and shutdown)."""
        if (services := self._services) is None:
            raise RuntimeError("the store is not open yet")
        return services.keys

    def revocations(self) -> StoredRevocations:
        """Revoked token ids (open between start-up and shutdown)."""
        if (services := self._services) is None:
            raise RuntimeError("the store is not open yet")
        return services.revocations

    def graph(self) -> GraphStore:
        """The knowledge graph (open between start-up and shutdown)."""
        if (services := self._services) is None:
            raise RuntimeError("the store is not open yet")
        return services.graph

    def sync(self) -> SyncEngine:
        """Graph sync (open between start-up and shutdown)."""
        if (services := self._services) is None:
            raise RuntimeError("the store is not open yet")
        return services.sync

    def sessions(self) -> SessionStore:
        """The session store (open between start-up and shutdown)."""
        if (services := self._services) is None:
            raise RuntimeError("the store is not open yet")
        return services.sessions

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
