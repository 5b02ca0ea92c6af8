"""This server's side of a mesh: join the registry over pinned TLS, heartbeat every peer, re-register, leave.

A member heartbeats the registry *and* every other member it learned of, and counts a peer alive when it answers
or heartbeats; so when the registry goes away, the survivors still see each other and agree on the next leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from specai.config import Settings, resolve_secret
from specai.errors import AuthError, ConnectionFailedError, SpecaiError, TrustError
from specai.fingerprint import fingerprint_der
from specai.mesh import MemberInfo, MeshRegistry
from specai.tls import fetch_peer_cert, pinned_ssl_context
from specai.trust import KnownServers, ServerAddress, parse_server, verify_identity

log = logging.getLogger("specai.mesh")
JOIN_TOKEN_ENV = "SPECAI_JOIN_TOKEN"
REQUEST_TIMEOUT = 5.0
LEAVE_TIMEOUT = 1.0
EVICT_AFTER_TIMEOUTS = (
    4  # a member silent for this many leader timeouts is removed (it re-registers by itself)
)


@dataclass(frozen=True)
class Credentials:
    """How this server logs in to its peers: a user of theirs, or a ready token."""

    username: str | None = None
    password: str | None = None
    token: str | None = None


def mesh_credentials(settings: Settings, env: Mapping[str, str] = os.environ) -> Credentials:
    """`[mesh] username` + `password_source`, else `SPECAI_JOIN_TOKEN`, else none (peers without auth)."""
    mesh = settings.mesh
    if mesh.username and mesh.password_source:
        return Credentials(mesh.username, resolve_secret(mesh.password_source, "[mesh] password_source", env))
    if mesh.username or mesh.password_source:
        raise AuthError("[mesh] needs both username and password_source (or set SPECAI_JOIN_TOKEN)")
    return Credentials(token=env.get(JOIN_TOKEN_ENV) or None)


class Peer:
    """A pinned, authenticated connection to one specai server."""

    def __init__(self, address: ServerAddress, credentials: Credentials, fingerprint: str | None) -> None:
        self.address = address
        self.credentials = credentials
        self.fingerprint = fingerprint  # expected; None only after `open` checked it another way
        self._http: httpx.AsyncClient | None = None
        self._token = credentials.token

    async def open(self, known: KnownServers | None = None) -> str:
        """Fetch the certificate (sending nothing), check it against the pin, connect; returns its fingerprint."""
        try:
            der = await asyncio.to_thread(fetch_peer_cert, self.address.host, self.address.port, timeout=5.0)
        except OSError as exc:
            raise ConnectionFailedError(
                f"cannot reach {self.address.origin}: {exc.strerror or exc}"
            ) from None
        presented = fingerprint_der(der)
        if known is not None:
            verify_identity(self.address, presented, known, expected=self.fingerprint)
        elif presented != self.fingerprint:
            raise TrustError(
                f"{self.address.origin} presents certificate {presented}, not the pinned {self.fingerprint}",
                fingerprint=presented,
            )
        self._http = httpx.AsyncClient(
            base_url=self.address.origin, verify=pinned_ssl_context(der), timeout=REQUEST_TIMEOUT
        )
        return presented

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One request; logs in first when it has a password, and once more when the token was refused."""
        if self._http is None:
            await self.open()
        assert self._http is not None
        for attempt in range(2):
            if self._token is None and self.credentials.password is not None:
                await self._login()
            headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
            response = await self._http.request(method, path, json=body, headers=headers)
            if response.status_code != 401 or attempt or self.credentials.password is None:
                return response
            self._token = None
        raise AssertionError("unreachable")

    async def _login(self) -> None:
        assert self._http is not None
        body = {"username": self.credentials.username, "password": self.credentials.password}
        response = await self._http.post("/auth/token", json=body)
        if response.status_code == 200:
            self._token = response.json()["token"]
        elif response.status_code != 503:  # 503 auth_disabled: no token needed
            raise AuthError(
                f"{self.address.origin} refused the mesh login of '{self.credentials.username}' "
                f"({_error_text(response)}); check [mesh] username and password_source"
            )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


class MeshLink:
    """A member joins the registry, heartbeats every peer until the server stops, then leaves; a registry (no
    `join_url`) only keeps its own entry fresh and evicts members that went silent."""

    def __init__(
        self,
        settings: Settings,
        registry: MeshRegistry,
        me: MemberInfo,
        join_url: str | None,
        join_fingerprint: str | None,
        credentials: Credentials,
        announce: Callable[[str], None] = print,
    ) -> None:
        self.settings = settings
        self.announce = announce
        self.failing: set[str] = set()  # peers whose last heartbeat failed: warn once, then on recovery
        self.registry = registry
        self.me = me
        self.join = parse_server(join_url) if join_url else None
        self.join_fingerprint = join_fingerprint
        self.credentials = credentials
        self.peers: dict[str, Peer] = {}
        self.registry_id: str | None = None

    async def start(self) -> None:
        """Join the registry; trust and login failures raise (the server must not run half-joined)."""
        assert self.join is not None
        peer = Peer(self.join, self.credentials, self.join_fingerprint)
        try:
            await peer.open(KnownServers(self.settings.home))
        except TrustError as exc:
            if self.join_fingerprint is not None or exc.fingerprint is None:
                raise
            raise TrustError(
                f"{self.join.origin} is not a known server; its certificate fingerprint is {exc.fingerprint}. "
                f"Check it (`specai cert fingerprint` on the registry) and pass --join-fingerprint {exc.fingerprint}",
                fingerprint=exc.fingerprint,
            ) from None
        body = await self._register(peer)
        listing = await peer.call("GET", "/registry/agents")
        self.registry_id = str(listing.json()["self_id"]) if listing.status_code == 200 else self.join.origin
        self.peers[self.registry_id] = peer
        await self.registry.learn(body.get("peers", []))
        self.announce(
            f"joined the mesh at {self.join.origin} as {self.me.instance_id} (leader {body.get('leader_id')})"
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Join, heartbeat every `heartbeat_interval_secs` until `stopping`, then deregister from every peer.

        An unreachable registry is retried; a refused certificate or login raises (TrustError, AuthError).
        """
        interval = self.settings.mesh.heartbeat_interval_secs
        started = asyncio.get_running_loop().time()
        evict_after = self.settings.mesh.leader_timeout_secs * EVICT_AFTER_TIMEOUTS
        try:
            while self.join is not None and self.registry_id is None and not stopping.is_set():
                try:
                    await self.start()
                except (ConnectionFailedError, httpx.HTTPError) as exc:
                    log.warning(
                        "cannot join the mesh at %s yet: %s; retrying", self.join.origin, _reason(exc)
                    )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(interval):
                            await stopping.wait()
            while not stopping.is_set():
                await self.beat()
                if asyncio.get_running_loop().time() - started > evict_after:
                    await self.registry.evict(dt.timedelta(seconds=evict_after))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(interval):
                        await stopping.wait()
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LEAVE_TIMEOUT):
                    await self.leave()
            for peer in self.peers.values():
                await peer.aclose()

    async def beat(self) -> None:
        """Touch our own entry and (as a member) heartbeat every peer at once."""
        await self.registry.touch(self.me.instance_id)
        if self.join is None:
            return
        view = await self.registry.view()
        for member in view.members:
            if member.instance_id != self.me.instance_id and member.instance_id not in self.peers:
                if member.fingerprint and member.base_url.startswith("https://"):
                    address = parse_server(member.base_url)
                    self.peers[member.instance_id] = Peer(address, self.credentials, member.fingerprint)
        known = {m.instance_id for m in view.members}
        for gone in [i for i in self.peers if i not in known and i != self.registry_id]:
            await self.peers.pop(gone).aclose()
        await asyncio.gather(
            *(self._beat(instance_id, peer) for instance_id, peer in list(self.peers.items()))
        )

    async def _beat(self, instance_id: str, peer: Peer) -> None:
        try:
            response = await peer.call(
                "POST", f"/registry/heartbeat/{self.me.instance_id}", {"status": "healthy"}
            )
            if response.status_code == 404:
                log.debug("%s does not know this server (any more); registering again", peer.address.origin)
                body = await self._register(peer)
            elif response.status_code == 200:
                body = response.json()
            else:
                self._failed(instance_id, peer, _error_text(response))
                return
            await self.registry.touch(instance_id)
            if instance_id == self.registry_id:
                await self.registry.learn(body.get("peers", []))
            if instance_id in self.failing:
                self.failing.discard(instance_id)
                log.warning("heartbeats to %s work again", peer.address.origin)
        except (httpx.HTTPError, SpecaiError, ValueError) as exc:
            self._failed(instance_id, peer, _reason(exc))

    def _failed(self, instance_id: str, peer: Peer, reason: str) -> None:
        if instance_id not in self.failing:
            self.failing.add(instance_id)
            log.warning("heartbeat to %s failed: %s; retrying every heartbeat", peer.address.origin, reason)

    async def _register(self, peer: Peer) -> dict[str, Any]:
        own = await self.registry.member(self.me.instance_id)
        body = {
            "instance_id": self.me.instance_id,
            "hostname": self.me.hostname,
            "port": self.me.port,
            "capabilities": list(self.me.capabilities),
            "agent_profiles": list(self.me.agent_profiles),
            "base_url": self.me.base_url,
            "fingerprint": self.me.fingerprint,
        }
        if peer.address != self.join:  # only the registry decides ranks; other peers learn ours
            body["registered_at"] = own.registered_at.isoformat()
        response = await peer.call("POST", "/registry/register", body)
        if response.status_code in (401, 403):
            raise AuthError(
                f"{peer.address.origin} refused to register this server ({_error_text(response)}); "
                "set [mesh] username and password_source, or SPECAI_JOIN_TOKEN"
            )
        if response.status_code != 200:
            raise ConnectionFailedError(f"{peer.address.origin} refused to register: {_error_text(response)}")
        result: dict[str, Any] = response.json()
        return result

    async def leave(self) -> None:
        """Deregister from every peer, at once, best effort."""

        async def bye(peer: Peer) -> None:
            with contextlib.suppress(Exception):
                await peer.call("DELETE", f"/registry/deregister/{self.me.instance_id}")

        await asyncio.gather(*(bye(peer) for peer in self.peers.values()))


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def _reason(exc: BaseException) -> str:
    return exc.message if isinstance(exc, SpecaiError) else (str(exc) or type(exc).__name__)
