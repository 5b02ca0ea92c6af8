"""Peer: the asyncio client one specai server uses to call another, pinned like the CLI's and authenticated
with a password login (only peers an operator pinned) or short-lived tokens from a `TokenSource`."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import msgspec

from specai.client import sse
from specai.client.errors import error_text
from specai.client.pinning import check_pin, fetch_cert_async, pinned_context
from specai.client.wire import body_of, decode
from specai.errors import AuthError, RemoteError
from specai.identity.trust import KnownServers, ServerAddress
from specai.server.schemas.auth import TokenIn, TokenOut

REQUEST_TIMEOUT = 5.0
T = TypeVar("T")
TokenSource = Callable[[bool], Awaitable[str]]  # (refresh) -> a bearer token for one peer


@dataclass(frozen=True)
class Credentials:
    """How this server logs in to a peer an operator pinned: a user of theirs, or a ready token."""

    username: str | None = None
    password: str | None = None
    token: str | None = None


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
        """Fetch the certificate (sending nothing), check it against the pin, connect; returns its fingerprint.

        With `known`, the pin is `fingerprint`, else known_servers.json, else `trusted`; without, only
        `fingerprint` (see `check_pin`).
        """
        der = await fetch_cert_async(self.address, REQUEST_TIMEOUT)
        presented = check_pin(self.address, der, known, expected=self.fingerprint, trusted=trusted)
        self.der = der
        self._http = httpx.AsyncClient(
            base_url=self.address.origin, verify=pinned_context(der), timeout=REQUEST_TIMEOUT
        )
        return presented

    async def call(
        self,
        method: str,
        path: str,
        body: msgspec.Struct | None = None,
        *,
        json: dict[str, Any] | None = None,
        operation_secs: float | None = None,
    ) -> httpx.Response:
        """One request with this peer's credentials, renewed once when refused (401); the caller reads the
        status, and the body with `decode`. `json` sends a built wire form instead of a Struct (sync payloads);
        `operation_secs` replaces the default timeout of each connect, read and write (for large bodies)."""
        http = await self._connected()
        payload = json if body is None else body_of(body)
        limit = httpx.USE_CLIENT_DEFAULT if operation_secs is None else httpx.Timeout(operation_secs)
        for attempt in range(2):
            headers = await self._headers(attempt > 0)
            response = await http.request(method, path, json=payload, headers=headers, timeout=limit)
            if response.status_code != 401 or attempt or not self._renewable():
                return response
        raise AssertionError("unreachable")

    def decode(self, response: httpx.Response, shape: type[T]) -> T:
        """A successful answer as `shape`, else UnexpectedAnswerError (a ConnectionFailedError) naming the call."""
        return decode(response.content, shape, f"{self.address.origin}{response.request.url.path}")

    async def probe(self) -> bool:
        """Is it up? `GET /health` over the pinned connection, with no credentials at all."""
        http = await self._connected()
        return (await http.get("/health")).status_code == 200

    async def watch(
        self,
        session_id: str,
        last_event_id: str | int | None = None,
        *,
        since: int | None = None,
        idle_timeout: float = 60.0,
    ) -> AsyncGenerator[sse.FeedEvent, None]:
        """GET /graph/stream: the events of one connection, as `SpecaiClient.watch` yields them; a refused
        token is renewed once before the stream starts."""
        http = await self._connected()
        path, resume = sse.change_stream(session_id, last_event_id, since)
        timeout = httpx.Timeout(REQUEST_TIMEOUT, read=idle_timeout)
        for attempt in range(2):
            headers = {**await self._headers(attempt > 0), **resume}
            events = sse.aiter_events(http, self.address, "GET", path, headers=headers, timeout=timeout)
            try:
                async for event in events:
                    yield sse.change_event(event)
                return
            except RemoteError as exc:
                if exc.http_status != 401 or attempt or not self._renewable():
                    raise
            finally:
                await events.aclose()

    def follow(
        self, session_id: str, since: int | None = None, *, idle_timeout: float = 60.0
    ) -> AsyncGenerator[sse.FeedItem, None]:
        """Follow a session's changes on this peer forever, resuming after every drop (see `sse.follow_async`)."""
        return sse.follow_async(lambda last: self.watch(session_id, last, idle_timeout=idle_timeout), since)

    async def aclose(self) -> None:
        """Close the connection pool."""
        if self._http is not None:
            await self._http.aclose()

    async def _connected(self) -> httpx.AsyncClient:
        if self._http is None:
            await self.open()
        assert self._http is not None
        return self._http

    def _renewable(self) -> bool:
        return self.tokens is not None or bool(self.credentials is not None and self.credentials.password)

    async def _headers(self, refresh: bool) -> dict[str, str]:
        token = await self._bearer(refresh)
        return {"Authorization": f"Bearer {token}"} if token else {}

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
        assert self._http is not None
        assert self.credentials is not None
        body = body_of(TokenIn(self.credentials.username or "", self.credentials.password or ""))
        response = await self._http.post("/auth/token", json=body)
        if response.status_code == 200:
            self._token = self.decode(response, TokenOut).token
        elif response.status_code != 503:  # 503 auth_disabled: no token needed
            raise AuthError(
                f"{self.address.origin} refused the mesh login of '{self.credentials.username}' "
                f"({error_text(response)}); check [mesh] username and password_source"
            )
