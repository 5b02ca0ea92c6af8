"""One pinned connection from this server to another specai server, and how it authenticates.

Only https, only to a certificate whose fingerprint is pinned (by the operator for the registry, by the registry for
the members it lists), and with a password only for peers an operator pinned; everyone else gets a peer token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from specai.config import Settings, resolve_secret
from specai.errors import AuthError, ConnectionFailedError, TlsError, TrustError
from specai.identity.fingerprint import fingerprint_der
from specai.identity.tls import pinned_ssl_context
from specai.identity.trust import KnownServers, ServerAddress, verify_identity

JOIN_TOKEN_ENV = "SPECAI_JOIN_TOKEN"
REQUEST_TIMEOUT = 5.0
TokenSource = Callable[[bool], Awaitable[str]]  # (refresh) -> a bearer token for one peer


@dataclass(frozen=True)
class Credentials:
    """How this server logs in to a peer an operator pinned: a user of theirs, or a ready token."""

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


async def fetch_cert(host: str, port: int, timeout: float = REQUEST_TIMEOUT) -> bytes:
    """Handshake without verification and return the peer's DER certificate; nothing else is sent. Async, so a
    silent peer costs a timer, not one of the few threads."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
    except TimeoutError:
        raise ConnectionFailedError(
            f"https://{host}:{port} did not complete a TLS handshake in {timeout:g} s"
        ) from None
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionFailedError(f"cannot reach https://{host}:{port}: {exc.strerror or exc}") from None
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(True)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):
                await writer.wait_closed()
    if not der:
        raise TlsError(f"https://{host}:{port} presented no certificate")
    return bytes(der)


class Peer:
    """A pinned connection to one specai server: a password login (operator-pinned peers only) or peer tokens."""

    def __init__(
        self,
        address: ServerAddress,
        fingerprint: str | None,
        *,
        credentials: Credentials | None = None,
        tokens: TokenSource | None = None,
    ) -> None:
        self.address = address
        self.fingerprint = fingerprint  # expected; None only for the registry, pinned in known_servers.json
        self.credentials = credentials
        self.tokens = tokens
        self.der: bytes | None = None
        self._http: httpx.AsyncClient | None = None
        self._token = credentials.token if credentials else None

    async def open(self, known: KnownServers | None = None, trusted: frozenset[str] = frozenset()) -> str:
        """Fetch the certificate (sending nothing), check it against the pin, connect; returns its fingerprint."""
        der = await fetch_cert(self.address.host, self.address.port)
        presented = fingerprint_der(der)
        if known is not None:
            if self.fingerprint is not None or presented not in trusted:
                verify_identity(self.address, presented, known, expected=self.fingerprint)
        elif presented != self.fingerprint:
            raise TrustError(
                f"{self.address.origin} presents certificate {presented}, not the pinned {self.fingerprint}",
                fingerprint=presented,
            )
        self.der = der
        self._http = httpx.AsyncClient(
            base_url=self.address.origin, verify=pinned_ssl_context(der), timeout=REQUEST_TIMEOUT
        )
        return presented

    async def call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One request with this peer's credentials, renewed once when refused (401)."""
        if self._http is None:
            await self.open()
        assert self._http is not None
        renewable = self.tokens is not None or (self.credentials is not None and self.credentials.password)
        for attempt in range(2):
            token = await self._bearer(refresh=attempt > 0)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            response = await self._http.request(method, path, json=body, headers=headers)
            if response.status_code != 401 or attempt or not renewable:
                return response
        raise AssertionError("unreachable")

    async def probe(self) -> bool:
        """Is it up? `GET /health` over the pinned connection, with no credentials at all."""
        if self._http is None:
            await self.open()
        assert self._http is not None
        return (await self._http.get("/health")).status_code == 200

    async def _bearer(self, refresh: bool) -> str | None:
        if self.tokens is not None:
            return await self.tokens(refresh)
        if self.credentials is None:
            return None
        if refresh and self.credentials.password is not None:
            self._token = None
        if self._token is None and self.credentials.password is not None:
            await self._login()
        return self._token

    async def _login(self) -> None:
        assert self._http is not None and self.credentials is not None
        body = {"username": self.credentials.username, "password": self.credentials.password}
        response = await self._http.post("/auth/token", json=body)
        if response.status_code == 200:
            self._token = response.json()["token"]
        elif response.status_code != 503:  # 503 auth_disabled: no token needed
            raise AuthError(
                f"{self.address.origin} refused the mesh login of '{self.credentials.username}' "
                f"({error_text(response)}); check [mesh] username and password_source"
            )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()


def error_text(response: httpx.Response) -> str:
    """The `error` of a specai error answer, else its status."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
