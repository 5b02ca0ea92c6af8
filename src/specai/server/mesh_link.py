"""This server's side of a mesh: join the registry over pinned TLS, heartbeat every peer, re-register, leave.

A member heartbeats the registry *and* every other member it learned of, and counts a peer alive when it answers
or heartbeats; so when the registry goes away, the survivors still see each other and agree on the next leader.
Each peer has its own loop with its own timeout, so a silent or fake member delays nobody but itself. The mesh
password goes only to the registry (pinned by the operator) and to peers in `[mesh] trusted_fingerprints`; every
other member is called with a short-lived peer token the registry signs for that one call path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import msgspec

from specai.client.errors import error_text, reason
from specai.client.peer import REQUEST_TIMEOUT, Credentials, Peer
from specai.config import Settings, resolve_secret
from specai.errors import AuthError, ConnectionFailedError, SpecaiError, TlsError, TrustError
from specai.identity.fingerprint import fingerprint_der, normalize_fingerprint
from specai.identity.trust import KnownServers, parse_server
from specai.mesh.registry import Member, MemberInfo, MeshRegistry
from specai.server.schemas.mesh import (
    HeartbeatIn,
    HeartbeatOut,
    MemberOut,
    MembersOut,
    PeerTokenIn,
    PeerTokenOut,
    RegisterIn,
    RegisterOut,
)

__all__ = ["Credentials", "MeshLink", "mesh_credentials"]

log = logging.getLogger("specai.mesh")
JOIN_TOKEN_ENV = "SPECAI_JOIN_TOKEN"
LEAVE_TIMEOUT = 1.0
EVICT_AFTER_TIMEOUTS = (
    4  # a member silent for this many leader timeouts is removed (it re-registers by itself)
)
TOKEN_RENEW_SECS = 45  # renew a peer token in the background once it has less than this left


def mesh_credentials(settings: Settings, env: Mapping[str, str] = os.environ) -> Credentials:
    """`[mesh] username` + `password_source`, else `SPECAI_JOIN_TOKEN`, else none (peers without auth)."""
    mesh = settings.mesh
    if mesh.username and mesh.password_source:
        return Credentials(mesh.username, resolve_secret(mesh.password_source, "[mesh] password_source", env))
    if mesh.username or mesh.password_source:
        raise AuthError("[mesh] needs both username and password_source (or set SPECAI_JOIN_TOKEN)")
    return Credentials(token=env.get(JOIN_TOKEN_ENV) or None)


class NoPeerToken(ConnectionFailedError):
    """The registry gave no peer token (it is down, or refused)."""


class MeshLink:
    """A member joins the registry, heartbeats every peer until the server stops, then leaves; a registry (no
    `join_url`) only keeps its own entry fresh (it heartbeats no member; graph sync calls members through
    `peer_for`). Evicting members that went silent is a singleton job (server.lifespan), not the link's: with
    several processes on one database only the leader evicts, while every process runs its link."""

    def __init__(
        self,
        settings: Settings,
        registry: MeshRegistry,
        me: MemberInfo,
        join_url: str | None,
        join_fingerprint: str | None,
        credentials: Credentials,
        announce: Callable[[str], None] = print,
        on_join: Callable[[bytes, str], None] | None = None,
        issue_token: Callable[[str, str], tuple[str, int]] | None = None,
    ) -> None:
        self.settings = settings
        self.announce = announce
        self.on_join = on_join
        self.issue_token = issue_token  # a registry signs the peer tokens it calls its members with
        self.failing: set[str] = set()  # peers whose last heartbeat failed: warn once, then on recovery
        self.registry = registry
        self.me = me
        self.join = parse_server(join_url) if join_url else None
        self.join_fingerprint = join_fingerprint
        self.credentials = credentials
        self.trusted = frozenset(normalize_fingerprint(f) for f in settings.mesh.trusted_fingerprints)
        self.peers: dict[str, Peer] = {}
        self.loops: dict[str, asyncio.Task[None]] = {}
        self.registry_id: str | None = None
        self._tokens: dict[str, tuple[str, float]] = {}  # audience -> (peer token, expiry)
        self._renewing: dict[str, asyncio.Task[None]] = {}

    async def start(self) -> None:
        """Join the registry; trust and login failures raise (the server must not run half-joined)."""
        assert self.join is not None
        peer = Peer(self.join, self.join_fingerprint, credentials=self.credentials)
        try:
            await peer.open(KnownServers(self.settings.home), self.trusted)
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
        ok = listing.status_code == 200
        self.registry_id = peer.decode(listing, MembersOut).self_id if ok else self.join.origin
        self.peers[self.registry_id] = peer
        if self.on_join is not None and peer.der is not None:
            self.on_join(peer.der, self.registry_id)  # from now on, accept the peer tokens it signs
        await self.registry.learn(_builtins(body.peers))
        self.announce(
            f"joined the mesh at {self.join.origin} as {self.me.instance_id} (leader {body.leader_id})"
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Join, keep one heartbeat loop per peer until `stopping`, then deregister from every peer.

        An unreachable registry is retried; a refused certificate or login raises (TrustError, AuthError).
        """
        interval = self.settings.mesh.heartbeat_interval_secs
        try:
            while self.join is not None and self.registry_id is None and not stopping.is_set():
                try:
                    await self.start()
                except (ConnectionFailedError, httpx.HTTPError) as exc:
                    log.warning("cannot join the mesh at %s yet: %s; retrying", self.join.origin, reason(exc))
                    await _wait(stopping, interval)
            while not stopping.is_set():
                await self.sync(stopping)
                await _wait(stopping, interval)
        finally:
            for task in [*self.loops.values(), *self._renewing.values()]:
                task.cancel()
            await asyncio.gather(*self.loops.values(), *self._renewing.values(), return_exceptions=True)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LEAVE_TIMEOUT):
                    await self.leave()
            for peer in self.peers.values():
                await peer.aclose()

    async def sync(self, stopping: asyncio.Event) -> None:
        """Touch our own entry and (as a member) keep one heartbeat loop per member the registry listed."""
        await self.registry.touch(self.me.instance_id)
        if self.join is None:
            return
        view = await self.registry.view()
        wanted = {
            m.instance_id: m
            for m in view.members
            if m.instance_id not in (self.me.instance_id, self.registry_id)
        }
        for instance_id in [i for i in self.peers if i != self.registry_id]:
            peer, member = self.peers[instance_id], wanted.get(instance_id)
            if member is None or _target(member) != (peer.address, peer.fingerprint):
                await self._drop(instance_id)
        for instance_id, member in wanted.items():
            if instance_id not in self.peers and (new := self._member_peer(member)) is not None:
                self.peers[instance_id] = new
        for instance_id, known in self.peers.items():
            if instance_id not in self.loops or self.loops[instance_id].done():
                self.loops[instance_id] = asyncio.create_task(self._loop(instance_id, known, stopping))

    def _member_peer(self, member: Member) -> Peer | None:
        """A member is contacted at its registered https base URL, pinned to its registered fingerprint, with a
        peer token (the password only when an operator listed that fingerprint in trusted_fingerprints)."""
        target = _target(member)
        if target is None:
            return None
        address, fingerprint = target
        if fingerprint in self.trusted:
            return Peer(address, fingerprint, credentials=self.credentials)
        return Peer(address, fingerprint, tokens=lambda refresh: self._token(member.instance_id, refresh))

    def peer_for(self, member: Member) -> Peer | None:
        """A new pinned Peer for calling `member` beyond heartbeats (graph sync), the caller's to close; None
        when it cannot be called yet (itself, not joined, no https address or fingerprint, no token source).

        The registry is called at the address joined and the certificate pinned then, with the mesh login;
        another member with a peer token from the registry; and when this server is the registry, every member
        with a peer token it signs itself (members accept tokens the registry they joined signed).
        """
        if member.instance_id == self.me.instance_id:
            return None
        if self.join is None:
            target = _target(member)
            if target is None or self.issue_token is None:
                return None
            audience = member.instance_id
            return Peer(*target, tokens=lambda refresh: self._signed(audience, refresh))
        if self.registry_id is None:
            return None
        if member.instance_id == self.registry_id:
            registry = self.peers.get(self.registry_id)
            if registry is None or registry.der is None:
                return None
            return Peer(self.join, fingerprint_der(registry.der), credentials=self.credentials)
        return self._member_peer(member)

    async def _signed(self, audience: str, refresh: bool) -> str:
        """A peer token this registry signs for calling member `audience` (cached until it nears expiry)."""
        assert self.issue_token is not None
        cached = self._tokens.get(audience)
        if cached is None or refresh or cached[1] - time.time() < TOKEN_RENEW_SECS:
            token, expires = self.issue_token(self.me.instance_id, audience)
            cached = self._tokens[audience] = (token, float(expires))
        return cached[0]

    async def _drop(self, instance_id: str) -> None:
        task = self.loops.pop(instance_id, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.peers.pop(instance_id).aclose()

    async def _loop(self, instance_id: str, peer: Peer, stopping: asyncio.Event) -> None:
        """Heartbeat one peer every interval, each attempt bounded by its own timeout."""
        while not stopping.is_set():
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await self._beat(instance_id, peer)
            except TimeoutError:
                self._failed(instance_id, peer, f"no answer within {REQUEST_TIMEOUT:g} s")
            await _wait(stopping, self.settings.mesh.heartbeat_interval_secs)

    async def _beat(self, instance_id: str, peer: Peer) -> None:
        try:
            response = await peer.call("POST", f"/registry/heartbeat/{self.me.instance_id}", HeartbeatIn())
            if response.status_code == 404:
                log.debug("%s does not know this server (any more); registering again", peer.address.origin)
                peers = (await self._register(peer)).peers
            elif response.status_code == 200:
                peers = peer.decode(response, HeartbeatOut).peers
            else:
                self._failed(instance_id, peer, error_text(response))
                return
            if instance_id == self.registry_id:  # ranks come from the registry only, never from other peers
                await self.registry.learn(_builtins(peers))
            await self._heard(instance_id, peer)
        except NoPeerToken as exc:  # the registry is gone: a credential-free probe still tells it is alive
            await self._probe(instance_id, peer, reason(exc))
        except (httpx.HTTPError, SpecaiError, ValueError) as exc:
            self._failed(instance_id, peer, reason(exc))

    async def _probe(self, instance_id: str, peer: Peer, why: str) -> None:
        try:
            alive = await peer.probe()
        except (httpx.HTTPError, SpecaiError) as exc:
            alive, why = False, f"{why}; {reason(exc)}"
        if alive:
            await self._heard(instance_id, peer)
        else:
            self._failed(instance_id, peer, why)

    async def _heard(self, instance_id: str, peer: Peer) -> None:
        await self.registry.touch(instance_id)
        if instance_id in self.failing:
            self.failing.discard(instance_id)
            log.warning("heartbeats to %s work again", peer.address.origin)

    def _failed(self, instance_id: str, peer: Peer, reason: str) -> None:
        if instance_id not in self.failing:
            self.failing.add(instance_id)
            log.warning("heartbeat to %s failed: %s; retrying every heartbeat", peer.address.origin, reason)

    async def _token(self, audience: str, refresh: bool) -> str:
        """A peer token for calling `audience`: cached, renewed in the background before it runs out."""
        cached = self._tokens.get(audience)
        left = cached[1] - time.time() if cached else 0.0
        if cached is None or refresh or left < 5:
            return await self._fetch_token(audience)
        if left < TOKEN_RENEW_SECS and (audience not in self._renewing or self._renewing[audience].done()):
            self._renewing[audience] = asyncio.create_task(self._renew(audience))
        return cached[0]

    async def _renew(self, audience: str) -> None:
        with contextlib.suppress(SpecaiError, httpx.HTTPError, ValueError, KeyError, TypeError):
            await self._fetch_token(audience)

    async def _fetch_token(self, audience: str) -> str:
        registry = self.peers.get(self.registry_id or "")
        if registry is None:
            raise NoPeerToken("not joined to a registry")
        body = PeerTokenIn(source=self.me.instance_id, audience=audience)
        try:
            response = await registry.call("POST", "/registry/peer-token", body)
        except (httpx.HTTPError, SpecaiError) as exc:
            raise NoPeerToken(f"the registry gave no peer token: {reason(exc)}") from None
        if response.status_code != 200:
            raise NoPeerToken(f"the registry gave no peer token: {error_text(response)}")
        try:
            answer = registry.decode(response, PeerTokenOut)
        except SpecaiError as exc:
            raise NoPeerToken(f"the registry gave no peer token: {reason(exc)}") from None
        self._tokens[audience] = (answer.token, float(answer.expires_at))
        return answer.token

    async def _register(self, peer: Peer) -> RegisterOut:
        body = RegisterIn(  # no rank: the registry assigns it, and other peers learn it from the registry
            instance_id=self.me.instance_id,
            hostname=self.me.hostname,
            port=self.me.port,
            capabilities=list(self.me.capabilities),
            agent_profiles=list(self.me.agent_profiles),
            base_url=self.me.base_url,
            fingerprint=self.me.fingerprint,
        )
        response = await peer.call("POST", "/registry/register", body)
        if response.status_code in (401, 403):
            raise AuthError(
                f"{peer.address.origin} refused to register this server ({error_text(response)}); "
                "set [mesh] username and password_source (an account with the mesh role), or SPECAI_JOIN_TOKEN"
            )
        if response.status_code != 200:
            raise ConnectionFailedError(f"{peer.address.origin} refused to register: {error_text(response)}")
        return peer.decode(response, RegisterOut)

    async def leave(self) -> None:
        """Deregister from every peer, at once, best effort."""

        async def bye(peer: Peer) -> None:
            with contextlib.suppress(Exception):
                await peer.call("DELETE", f"/registry/deregister/{self.me.instance_id}")

        await asyncio.gather(*(bye(peer) for peer in self.peers.values()))


def _builtins(peers: list[MemberOut]) -> list[dict[str, Any]]:
    """Members as the registry's `learn` takes them (the core knows no wire Structs)."""
    result: list[dict[str, Any]] = msgspec.to_builtins(peers)
    return result


def _target(member: Member) -> tuple[Any, str] | None:
    """Where a member may be contacted: its https base URL's host and port, and its normalized fingerprint."""
    if not member.fingerprint or not member.base_url.startswith("https://"):
        return None
    try:
        return parse_server(member.base_url), normalize_fingerprint(member.fingerprint)
    except (SpecaiError, TlsError):
        return None


async def _wait(stopping: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stopping.wait()
